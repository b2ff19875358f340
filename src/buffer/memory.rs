//! The memory tier's storage for one fragment: an ordered list of immutable `Bytes` chunks.
//!
//! A live fragment is built from two kinds of chunk: header bytes the muxer built (tags, cluster
//! and block headers), gathered by the writer in a `BytesMut` and frozen when a payload arrives,
//! and frame payloads, kept by reference. Chunks are only ever appended, so a reader's chunk index
//! stays valid while the fragment grows. A fragment read back from disk is a single chunk.

use bytes::{Bytes, BytesMut};

/// The bytes of one fragment held in memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemBytes {
    chunks: Vec<Bytes>,
    len: u64,
}

impl MemBytes {
    /// A fragment loaded in one piece (from disk).
    pub fn single(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        MemBytes {
            chunks: vec![bytes],
            len,
        }
    }

    /// Appends a chunk; empty chunks are not stored.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len() as u64;
            self.chunks.push(chunk);
        }
    }

    /// Freezes what `pending` holds (if anything) and appends it. The split leaves `pending` with
    /// the rest of its allocation, so header bytes of many frames share one buffer.
    pub fn push_pending(&mut self, pending: &mut BytesMut) -> u64 {
        if pending.is_empty() {
            return 0;
        }
        let chunk = pending.split().freeze();
        let added = chunk.len() as u64;
        self.push(chunk);
        added
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The chunk at `index`, if there is one yet.
    pub fn chunk(&self, index: usize) -> Option<&Bytes> {
        self.chunks.get(index)
    }

    /// All chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Copies every chunk's bytes into one buffer (tests and diagnostics only).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_header_bytes_share_one_allocation_and_payloads_are_not_copied() {
        let payload = Bytes::from(vec![7u8; 1000]);
        let mut pending = BytesMut::with_capacity(4096);
        let mut mem = MemBytes::default();
        pending.extend_from_slice(b"hdr1");
        assert_eq!(mem.push_pending(&mut pending), 4);
        mem.push(payload.clone());
        pending.extend_from_slice(b"hdr2");
        mem.push_pending(&mut pending);
        assert_eq!(mem.push_pending(&mut pending), 0, "nothing pending");
        mem.push(Bytes::new());
        assert_eq!(mem.chunks().len(), 3);
        assert_eq!(mem.len(), 1008);
        // The payload chunk is the caller's buffer, not a copy.
        assert_eq!(mem.chunk(1).map(|c| c.as_ptr()), Some(payload.as_ptr()));
        // Both header chunks come from the same allocation, one after the other.
        let (a, b) = (
            mem.chunk(0).map(|c| c.as_ptr()),
            mem.chunk(2).map(|c| c.as_ptr()),
        );
        assert_eq!(a.map(|p| p.wrapping_add(4)), b);
        let mut expected = b"hdr1".to_vec();
        expected.extend_from_slice(&[7u8; 1000]);
        expected.extend_from_slice(b"hdr2");
        assert_eq!(mem.to_vec(), expected);
    }
}
