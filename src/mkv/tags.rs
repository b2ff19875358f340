//! Fragment metadata (KVS "fragment tags") and event tags, shared between the daemon's local API
//! and the muxer.
//!
//! Invariants:
//! - Every stored item already satisfies KVS's limits: names 1..=128 bytes not starting with
//!   `AWS`, values ≤ 256 bytes, ≤ 10 custom pairs per event, an image prefix ≤ 256 bytes.
//! - Counting rule for the service's 10-items-per-fragment limit: each persistent item, each
//!   transient item and each event counts one (an event is one Tag element however many
//!   SimpleTags it carries, as KVS's producer queues it as one item). The control tags the muxer
//!   writes itself (`AWS_KINESISVIDEO_END_OF_FRAGMENT`) do not count. Adding is refused once
//!   persistent + queued transient + queued events would pass 10, so the muxer can always write
//!   everything due at a fragment start.
//! - Each event type is queued at most once per fragment.
//! - Storage is fixed-capacity (`heapless`): adding never allocates beyond the error path.
//! - The muxer locks the state once when it opens a fragment (and once when it closes one on an
//!   end-of-fragment request), never per frame; the end-of-fragment request is an atomic flag.

use crate::mkv::ebml::{EbmlError, EbmlWriter, id};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

/// Fragment metadata items (persistent + transient + events) KVS accepts per fragment.
pub const MAX_TAGS_PER_FRAGMENT: usize = 10;
/// Longest tag name, bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest tag value, bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Custom name/value pairs an event may carry.
pub const MAX_EVENT_PAIRS: usize = 10;
/// Names starting with this are reserved for the service.
pub const RESERVED_PREFIX: &str = "AWS";

/// Closes a fragment early (EoFR) and ends a session (EoS); empty value.
pub const END_OF_FRAGMENT: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";
/// Marks an image-generation event (empty value).
pub const IMAGE_GENERATION: &str = "AWS_KINESISVIDEO_IMAGE_GENERATION";
/// S3 key prefix of an image-generation event.
pub const IMAGE_PREFIX: &str = "AWS_KINESISVIDEO_IMAGE_PREFIX";
/// Marks a notification event (empty value).
pub const NOTIFICATION: &str = "AWS_KINESISVIDEO_NOTIFICATION";

type Name = heapless::String<MAX_NAME_LEN>;
type Value = heapless::String<MAX_VALUE_LEN>;

/// A KVS stream event attached to the fragment being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Ask KVS to generate an image from this fragment (needs an image-generation configuration).
    /// `prefix` is the S3 key prefix; `pairs` become S3 object metadata.
    ImageGeneration {
        prefix: Option<String>,
        pairs: Vec<(String, String)>,
    },
    /// Ask KVS to send an SNS notification when the fragment is persisted; `pairs` appear in it.
    Notification { pairs: Vec<(String, String)> },
}

impl Event {
    /// Which event type this is (at most one of each per fragment).
    pub fn kind(&self) -> EventKind {
        match self {
            Event::ImageGeneration { .. } => EventKind::ImageGeneration,
            Event::Notification { .. } => EventKind::Notification,
        }
    }
}

/// The event types KVS knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ImageGeneration,
    Notification,
}

impl EventKind {
    /// The SimpleTag name that marks the event.
    pub fn tag_name(self) -> &'static str {
        match self {
            EventKind::ImageGeneration => IMAGE_GENERATION,
            EventKind::Notification => NOTIFICATION,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::ImageGeneration => "image generation",
            EventKind::Notification => "notification",
        })
    }
}

/// Why a tag or event was refused. Names in errors are cut to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    #[error("tag name is empty")]
    EmptyName,
    #[error("tag name {name:?} is {len} bytes; at most {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("tag {name:?}: value is {len} bytes; at most {MAX_VALUE_LEN}")]
    ValueTooLong { name: String, len: usize },
    #[error("tag name {name:?} starts with {RESERVED_PREFIX:?}, reserved for the service")]
    ReservedName { name: String },
    #[error(
        "tag {name:?}: the next fragment already has {MAX_TAGS_PER_FRAGMENT} metadata items \
         (persistent + transient + events), the most KVS accepts"
    )]
    TooManyTags { name: String },
    #[error("a {kind} event is already queued for the next fragment (one per type per fragment)")]
    DuplicateEvent { kind: EventKind },
    #[error("{kind} event has {count} custom pairs; at most {MAX_EVENT_PAIRS}")]
    TooManyEventPairs { kind: EventKind, count: usize },
    #[error("image generation prefix is {len} bytes; at most {MAX_VALUE_LEN}")]
    PrefixTooLong { len: usize },
}

fn shown(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn check_name(name: &str) -> Result<Name, TagError> {
    if name.is_empty() {
        return Err(TagError::EmptyName);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(TagError::ReservedName { name: shown(name) });
    }
    Name::try_from(name).map_err(|_| TagError::NameTooLong {
        name: shown(name),
        len: name.len(),
    })
}

fn check_value(name: &str, value: &str) -> Result<Value, TagError> {
    Value::try_from(value).map_err(|_| TagError::ValueTooLong {
        name: shown(name),
        len: value.len(),
    })
}

#[derive(Debug, Clone)]
struct Item {
    name: Name,
    value: Value,
}

fn check_item(name: &str, value: &str) -> Result<Item, TagError> {
    Ok(Item {
        name: check_name(name)?,
        value: check_value(name, value)?,
    })
}

#[derive(Debug, Clone)]
struct StoredEvent {
    kind: EventKind,
    prefix: Option<Value>,
    pairs: heapless::Vec<Item, MAX_EVENT_PAIRS>,
}

impl StoredEvent {
    fn from_event(event: &Event) -> Result<Self, TagError> {
        let kind = event.kind();
        let (prefix, pairs) = match event {
            Event::ImageGeneration { prefix, pairs } => (prefix.as_deref(), pairs),
            Event::Notification { pairs } => (None, pairs),
        };
        let prefix = prefix
            .map(|p| Value::try_from(p).map_err(|_| TagError::PrefixTooLong { len: p.len() }))
            .transpose()?;
        if pairs.len() > MAX_EVENT_PAIRS {
            return Err(TagError::TooManyEventPairs {
                kind,
                count: pairs.len(),
            });
        }
        let mut stored = heapless::Vec::new();
        for (name, value) in pairs {
            let item = check_item(name, value)?;
            // Capacity checked above.
            let _ = stored.push(item);
        }
        Ok(Self {
            kind,
            prefix,
            pairs: stored,
        })
    }
}

#[derive(Debug, Default)]
struct TagState {
    persistent: heapless::Vec<Item, MAX_TAGS_PER_FRAGMENT>,
    transient: heapless::Vec<Item, MAX_TAGS_PER_FRAGMENT>,
    events: heapless::Vec<StoredEvent, 2>,
}

impl TagState {
    fn due_count(&self) -> usize {
        self.persistent.len() + self.transient.len() + self.events.len()
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<TagState>,
    end_requested: AtomicBool,
}

/// Thread-safe handle to a stream's fragment tags: the daemon's local API adds, the muxer takes.
/// Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FragmentTags(Arc<Shared>);

impl FragmentTags {
    /// An empty set of tags.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, TagState> {
        // No code path panics while holding the lock, so a poisoned state is still consistent.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a tag written on every fragment from the next one on. The same name replaces the old
    /// value; an empty value removes the tag.
    pub fn set_persistent(&self, name: &str, value: &str) -> Result<(), TagError> {
        let item = check_item(name, value)?;
        let mut state = self.lock();
        let existing = state.persistent.iter().position(|p| p.name == item.name);
        match (existing, value.is_empty()) {
            (Some(i), true) => {
                state.persistent.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(slot) = state.persistent.get_mut(i) {
                    slot.value = item.value;
                }
            }
            (None, false) => {
                if state.due_count() >= MAX_TAGS_PER_FRAGMENT {
                    return Err(TagError::TooManyTags { name: shown(name) });
                }
                state
                    .persistent
                    .push(item)
                    .map_err(|_| TagError::TooManyTags { name: shown(name) })?;
            }
        }
        Ok(())
    }

    /// Removes a persistent tag; no effect if it is not set.
    pub fn clear_persistent(&self, name: &str) {
        let mut state = self.lock();
        if let Some(i) = state.persistent.iter().position(|p| p.name == name) {
            state.persistent.remove(i);
        }
    }

    /// Queues a tag for the next fragment only. Duplicate names are allowed (KVS allows them).
    pub fn add_transient(&self, name: &str, value: &str) -> Result<(), TagError> {
        let item = check_item(name, value)?;
        let mut state = self.lock();
        if state.due_count() >= MAX_TAGS_PER_FRAGMENT {
            return Err(TagError::TooManyTags { name: shown(name) });
        }
        state
            .transient
            .push(item)
            .map_err(|_| TagError::TooManyTags { name: shown(name) })
    }

    /// Queues an event for the next fragment (or, after [`Self::end_fragment`], the fragment
    /// being closed). One event of each type per fragment.
    pub fn add_event(&self, event: Event) -> Result<(), TagError> {
        let stored = StoredEvent::from_event(&event)?;
        let mut state = self.lock();
        if state.events.iter().any(|e| e.kind == stored.kind) {
            return Err(TagError::DuplicateEvent { kind: stored.kind });
        }
        if state.due_count() >= MAX_TAGS_PER_FRAGMENT {
            return Err(TagError::TooManyTags {
                name: stored.kind.tag_name().to_owned(),
            });
        }
        state
            .events
            .push(stored)
            .map_err(|_| TagError::DuplicateEvent { kind: event.kind() })
    }

    /// Asks the muxer to close the current fragment at the next frame it writes: queued
    /// transient tags and events go into that fragment (as many as its 10-item budget still
    /// allows), followed by an `AWS_KINESISVIDEO_END_OF_FRAGMENT` tag; frames then wait for the
    /// next video key frame, which opens a new fragment whatever the fragment duration. No
    /// effect when no fragment is open.
    pub fn end_fragment(&self) {
        self.0.end_requested.store(true, Ordering::Release);
    }

    /// The persistent tags, in the order they are written.
    pub fn persistent(&self) -> Vec<(String, String)> {
        self.lock()
            .persistent
            .iter()
            .map(|p| (p.name.as_str().to_owned(), p.value.as_str().to_owned()))
            .collect()
    }

    /// Metadata items the next fragment will carry (persistent + transient + events).
    pub fn due_count(&self) -> usize {
        self.lock().due_count()
    }

    /// Takes a pending end-of-fragment request (one atomic load per frame when none is pending).
    pub(crate) fn take_end_request(&self) -> bool {
        self.0.end_requested.load(Ordering::Relaxed)
            && self.0.end_requested.swap(false, Ordering::AcqRel)
    }

    /// Writes everything due at a fragment start (persistent, then transient, then events) and
    /// dequeues the transient items and events. Returns the number of items written.
    pub(crate) fn write_fragment_start(&self, buf: &mut Vec<u8>) -> Result<usize, EbmlError> {
        let mut state = self.lock();
        let mut written = 0;
        for item in &state.persistent {
            write_item(buf, &item.name, &item.value)?;
            written += 1;
        }
        written += drain_queued(&mut state, buf, usize::MAX)?;
        Ok(written)
    }

    /// Writes up to `room` queued transient items and events (oldest first) and dequeues them;
    /// the rest stay queued for the next fragment. Returns the number written.
    pub(crate) fn write_queued(&self, buf: &mut Vec<u8>, room: usize) -> Result<usize, EbmlError> {
        let mut state = self.lock();
        drain_queued(&mut state, buf, room)
    }
}

fn drain_queued(state: &mut TagState, buf: &mut Vec<u8>, room: usize) -> Result<usize, EbmlError> {
    let transient = state.transient.len().min(room);
    for item in state.transient.iter().take(transient) {
        write_item(buf, &item.name, &item.value)?;
    }
    remove_front(&mut state.transient, transient);
    let events = state.events.len().min(room - transient);
    for event in state.events.iter().take(events) {
        write_event(buf, event)?;
    }
    remove_front(&mut state.events, events);
    Ok(transient + events)
}

fn remove_front<T, const N: usize>(v: &mut heapless::Vec<T, N>, n: usize) {
    if n >= v.len() {
        v.clear();
    } else {
        for _ in 0..n {
            v.remove(0);
        }
    }
}

fn simple_tag(w: &mut EbmlWriter<'_>, name: &str, value: &str) -> Result<(), EbmlError> {
    w.begin(id::SIMPLE_TAG)?;
    w.string(id::TAG_NAME, name)?;
    w.string(id::TAG_STRING, value)?;
    w.end()
}

/// Writes one metadata item as its own Tags → Tag → SimpleTag chain (no Targets, as KVS's
/// producer writes it).
pub fn write_item(buf: &mut Vec<u8>, name: &str, value: &str) -> Result<(), EbmlError> {
    let mut w = EbmlWriter::new(buf);
    w.begin(id::TAGS)?;
    w.begin(id::TAG)?;
    simple_tag(&mut w, name, value)?;
    w.end()?;
    w.end()
}

fn write_event(buf: &mut Vec<u8>, event: &StoredEvent) -> Result<(), EbmlError> {
    let mut w = EbmlWriter::new(buf);
    w.begin(id::TAGS)?;
    w.begin(id::TAG)?;
    simple_tag(&mut w, event.kind.tag_name(), "")?;
    if let Some(prefix) = &event.prefix {
        simple_tag(&mut w, IMAGE_PREFIX, prefix)?;
    }
    for pair in &event.pairs {
        simple_tag(&mut w, &pair.name, &pair.value)?;
    }
    w.end()?;
    w.end()
}

/// Writes the `AWS_KINESISVIDEO_END_OF_FRAGMENT` Tags (also the end-of-session trailer).
pub fn write_end_of_fragment(buf: &mut Vec<u8>) -> Result<(), EbmlError> {
    write_item(buf, END_OF_FRAGMENT, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_bytes(tags: &FragmentTags) -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        let n = tags.write_fragment_start(&mut buf).unwrap();
        (buf, n)
    }

    fn item_bytes(name: &str, value: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        write_item(&mut buf, name, value).unwrap();
        buf
    }

    #[test]
    fn item_layout_by_hand() {
        let expected = [
            0x12, 0x54, 0xC3, 0x67, 0x91, // Tags, 17
            0x73, 0x73, 0x8E, // Tag, 14
            0x67, 0xC8, 0x8B, // SimpleTag, 11
            0x45, 0xA3, 0x84, b's', b'i', b't', b'e', // TagName "site"
            0x44, 0x87, 0x81, b'7', // TagString "7"
        ];
        assert_eq!(item_bytes("site", "7"), expected);
    }

    #[test]
    fn end_of_fragment_layout() {
        let mut buf = Vec::new();
        write_end_of_fragment(&mut buf).unwrap();
        let mut expected = vec![0x12, 0x54, 0xC3, 0x67, 0x80 | 44, 0x73, 0x73, 0x80 | 41];
        expected.extend_from_slice(&[0x67, 0xC8, 0x80 | 38, 0x45, 0xA3, 0x80 | 32]);
        expected.extend_from_slice(END_OF_FRAGMENT.as_bytes());
        expected.extend_from_slice(&[0x44, 0x87, 0x80]);
        assert_eq!(buf, expected);
    }

    #[test]
    fn persistent_repeats_transient_once() {
        let tags = FragmentTags::new();
        tags.set_persistent("site", "7").unwrap();
        tags.add_transient("door", "open").unwrap();
        let (first, n1) = start_bytes(&tags);
        assert_eq!(n1, 2);
        let mut expected = item_bytes("site", "7");
        expected.extend(item_bytes("door", "open"));
        assert_eq!(first, expected);
        let (second, n2) = start_bytes(&tags);
        assert_eq!(n2, 1);
        assert_eq!(second, item_bytes("site", "7"));
    }

    #[test]
    fn persistent_replace_and_clear() {
        let tags = FragmentTags::new();
        tags.set_persistent("a", "1").unwrap();
        tags.set_persistent("b", "2").unwrap();
        tags.set_persistent("a", "3").unwrap();
        assert_eq!(
            tags.persistent(),
            [("a".into(), "3".into()), ("b".into(), "2".into())]
        );
        tags.set_persistent("a", "").unwrap();
        assert_eq!(tags.persistent(), [("b".into(), "2".into())]);
        tags.clear_persistent("b");
        tags.clear_persistent("never-set");
        assert!(tags.persistent().is_empty());
        assert_eq!(start_bytes(&tags), (Vec::new(), 0));
    }

    #[test]
    fn name_and_value_limits() {
        let tags = FragmentTags::new();
        let name128 = "n".repeat(128);
        let value256 = "v".repeat(256);
        tags.add_transient(&name128, &value256).unwrap();
        assert_eq!(
            tags.add_transient(&"n".repeat(129), "x"),
            Err(TagError::NameTooLong {
                name: "n".repeat(64),
                len: 129
            })
        );
        assert_eq!(
            tags.set_persistent("k", &"v".repeat(257)),
            Err(TagError::ValueTooLong {
                name: "k".into(),
                len: 257
            })
        );
        assert_eq!(tags.add_transient("", "x"), Err(TagError::EmptyName));
        let err = tags.add_transient("AWS_MINE", "x").unwrap_err();
        assert_eq!(
            err,
            TagError::ReservedName {
                name: "AWS_MINE".into()
            }
        );
        assert!(err.to_string().contains("AWS_MINE"));
        // Multi-byte names are measured in bytes and cut on a char boundary in errors.
        let wide = "é".repeat(65); // 130 bytes
        match tags.add_transient(&wide, "x") {
            Err(TagError::NameTooLong { name, len }) => {
                assert_eq!(len, 130);
                assert_eq!(name, "é".repeat(32));
            }
            other => panic!("expected NameTooLong, got {other:?}"),
        }
        assert_eq!(tags.due_count(), 1);
    }

    #[test]
    fn ten_items_per_fragment_counting_events() {
        let tags = FragmentTags::new();
        for i in 0..4 {
            tags.set_persistent(&format!("p{i}"), "x").unwrap();
        }
        for i in 0..5 {
            tags.add_transient(&format!("t{i}"), "x").unwrap();
        }
        tags.add_event(Event::Notification {
            pairs: vec![("k".into(), "v".into())],
        })
        .unwrap();
        assert_eq!(tags.due_count(), 10);
        assert_eq!(
            tags.add_transient("t5", "x"),
            Err(TagError::TooManyTags { name: "t5".into() })
        );
        assert_eq!(
            tags.set_persistent("p9", "x"),
            Err(TagError::TooManyTags { name: "p9".into() })
        );
        assert!(matches!(
            tags.add_event(Event::ImageGeneration {
                prefix: None,
                pairs: vec![]
            }),
            Err(TagError::TooManyTags { .. })
        ));
        // Replacing a persistent value does not add an item.
        tags.set_persistent("p0", "y").unwrap();
        let (_, n) = start_bytes(&tags);
        assert_eq!(n, 10);
        // Transient items and the event are gone: room again.
        tags.add_transient("t5", "x").unwrap();
        assert_eq!(tags.due_count(), 5);
    }

    #[test]
    fn events_once_per_type_with_pairs() {
        let tags = FragmentTags::new();
        tags.add_event(Event::ImageGeneration {
            prefix: Some("cam1/".into()),
            pairs: vec![("reason".into(), "motion".into())],
        })
        .unwrap();
        assert_eq!(
            tags.add_event(Event::ImageGeneration {
                prefix: None,
                pairs: vec![]
            }),
            Err(TagError::DuplicateEvent {
                kind: EventKind::ImageGeneration
            })
        );
        tags.add_event(Event::Notification { pairs: vec![] })
            .unwrap();
        let (buf, n) = start_bytes(&tags);
        assert_eq!(n, 2);
        // First event: one Tags → Tag holding three SimpleTags.
        let mut w_buf = Vec::new();
        {
            let mut w = EbmlWriter::new(&mut w_buf);
            w.begin(id::TAGS).unwrap();
            w.begin(id::TAG).unwrap();
            simple_tag(&mut w, IMAGE_GENERATION, "").unwrap();
            simple_tag(&mut w, IMAGE_PREFIX, "cam1/").unwrap();
            simple_tag(&mut w, "reason", "motion").unwrap();
            w.end().unwrap();
            w.end().unwrap();
        }
        assert_eq!(&buf[..w_buf.len()], w_buf.as_slice());
        assert_eq!(&buf[w_buf.len()..], item_bytes(NOTIFICATION, "").as_slice());
        // Both event types may be queued again for the next fragment.
        tags.add_event(Event::Notification { pairs: vec![] })
            .unwrap();
    }

    #[test]
    fn event_validation() {
        let tags = FragmentTags::new();
        let pairs: Vec<(String, String)> =
            (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(
            tags.add_event(Event::Notification { pairs }),
            Err(TagError::TooManyEventPairs {
                kind: EventKind::Notification,
                count: 11
            })
        );
        assert_eq!(
            tags.add_event(Event::ImageGeneration {
                prefix: Some("p".repeat(257)),
                pairs: vec![]
            }),
            Err(TagError::PrefixTooLong { len: 257 })
        );
        assert_eq!(
            tags.add_event(Event::Notification {
                pairs: vec![("AWSx".into(), "v".into())]
            }),
            Err(TagError::ReservedName {
                name: "AWSx".into()
            })
        );
        assert_eq!(tags.due_count(), 0);
    }

    #[test]
    fn write_queued_respects_room_and_keeps_the_rest() {
        let tags = FragmentTags::new();
        tags.set_persistent("p", "x").unwrap();
        tags.add_transient("t1", "1").unwrap();
        tags.add_transient("t2", "2").unwrap();
        tags.add_event(Event::Notification { pairs: vec![] })
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(tags.write_queued(&mut buf, 1).unwrap(), 1);
        assert_eq!(buf, item_bytes("t1", "1"));
        let (buf, n) = start_bytes(&tags);
        assert_eq!(n, 3);
        let mut expected = item_bytes("p", "x");
        expected.extend(item_bytes("t2", "2"));
        expected.extend(item_bytes(NOTIFICATION, ""));
        assert_eq!(buf, expected);
    }

    #[test]
    fn end_request_is_taken_once_and_shared_by_clones() {
        let tags = FragmentTags::new();
        let api = tags.clone();
        assert!(!tags.take_end_request());
        api.end_fragment();
        assert!(tags.take_end_request());
        assert!(!tags.take_end_request());
    }

    #[test]
    fn handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FragmentTags>();
        let tags = FragmentTags::new();
        let t2 = tags.clone();
        std::thread::spawn(move || t2.add_transient("from", "thread"))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(tags.due_count(), 1);
    }
}
