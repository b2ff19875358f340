//! The `record` job: one camera's capture → muxer → a Matroska file holding exactly the bytes the
//! uploader would send for the same fragments.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::capture::{Capture, CaptureError, CaptureEvent, TrackFormat};
use crate::config::{CameraConfig, ValidatedConfig};
use crate::media::Frame;
use crate::mkv::{FragmentEnd, FragmentMuxer, FragmentStart, MuxError, MuxSink, TagError};

use super::camera;

/// Frames held while waiting for every track's format: a pipeline that delivers this many
/// frames of one track before the other track's caps is broken, not slow.
const MAX_FRAMES_BEFORE_FORMATS: usize = 1024;

/// What a recording produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSummary {
    pub fragments: u64,
    pub frames: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no camera named {name:?} in the configuration (cameras: {known})")]
    UnknownCamera { name: String, known: String },
    #[error("the configuration has no [[camera]]")]
    NoCamera,
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("muxing failed: {0}")]
    Mux(#[from] MuxError),
    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    #[error("camera {camera:?}: metadata: {source}")]
    Metadata { camera: String, source: TagError },
    #[error(
        "camera {camera:?}: {frames} frames arrived but track {track} never reported its format"
    )]
    NoFormat {
        camera: String,
        track: usize,
        frames: usize,
    },
}

/// A [`MuxSink`] that appends everything to a file, counting fragments.
pub struct FileSink<W: Write> {
    out: W,
    summary: RecordSummary,
}

impl<W: Write> FileSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            summary: RecordSummary::default(),
        }
    }
    pub fn summary(&self) -> &RecordSummary {
        &self.summary
    }
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> MuxSink for FileSink<W> {
    fn stream_header(&mut self, header: &Bytes) -> io::Result<()> {
        self.summary.bytes += header.len() as u64;
        self.out.write_all(header)
    }
    fn fragment_start(&mut self, _start: &FragmentStart) -> io::Result<()> {
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.summary.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }
    fn write_payload(&mut self, payload: &Bytes) -> io::Result<()> {
        self.summary.bytes += payload.len() as u64;
        self.out.write_all(payload)
    }
    fn fragment_end(&mut self, end: &FragmentEnd) -> io::Result<()> {
        self.summary.fragments += 1;
        self.summary.frames += u64::from(end.frames);
        Ok(())
    }
    fn stream_end(&mut self, trailer: &[u8]) -> io::Result<()> {
        self.summary.bytes += trailer.len() as u64;
        self.out.write_all(trailer)?;
        self.out.flush()
    }
}

/// Records `duration` of media from the named camera (the first when `None`) into `output`.
///
/// Stops early, with a complete file, on Ctrl-C/SIGTERM. Frames the muxer must drop (before the
/// first key frame, out of order) are logged and counted, not fatal.
pub async fn record(
    config: &ValidatedConfig,
    camera_name: Option<&str>,
    duration: Duration,
    output: &Path,
) -> Result<RecordSummary, RecordError> {
    let camera = find_camera(config, camera_name)?;
    let tags = camera::fragment_tags(camera).map_err(|source| RecordError::Metadata {
        camera: camera.name.clone(),
        source,
    })?;
    let file = File::create(output).map_err(|source| RecordError::Output {
        path: output.to_owned(),
        source,
    })?;
    let mut sink = FileSink::new(BufWriter::with_capacity(256 * 1024, file));
    let spec = camera::pipeline_spec(camera, Some(duration));
    let (capture, mut events) = Capture::start(&spec)?;
    tracing::info!(camera = %camera.name, pipeline = %capture.describe(), "recording");

    let tracks = camera::track_count(camera);
    let mut formats: Vec<Option<TrackFormat>> = vec![None; tracks];
    let mut waiting: Vec<Frame> = Vec::new();
    let mut muxer: Option<FragmentMuxer> = None;
    let mut stopping = false;
    let mut capture_error = None;

    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown_signal(), if !stopping => {
                tracing::info!("stopping: finishing the open fragment");
                stopping = true;
                capture.stop();
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            CaptureEvent::Format { track, format } => {
                if muxer.is_some() {
                    tracing::warn!(
                        track,
                        ?format,
                        "format changed mid-recording; keeping the first"
                    );
                } else if let Some(slot) = formats.get_mut(track) {
                    *slot = Some(format);
                }
            }
            CaptureEvent::Frame(frame) => match muxer.as_mut() {
                Some(muxer) => push(muxer, frame, &mut sink, output)?,
                None => {
                    waiting.push(frame);
                    if let Some(ready) = all_formats(&formats) {
                        let config = camera::muxer_config(camera, &ready);
                        let mut created = FragmentMuxer::new(config, tags.clone())?;
                        for frame in waiting.drain(..) {
                            push(&mut created, frame, &mut sink, output)?;
                        }
                        muxer = Some(created);
                    } else if waiting.len() >= MAX_FRAMES_BEFORE_FORMATS {
                        let track = formats.iter().position(Option::is_none).unwrap_or(0);
                        return Err(RecordError::NoFormat {
                            camera: camera.name.clone(),
                            track,
                            frames: waiting.len(),
                        });
                    }
                }
            },
            CaptureEvent::Eos => break,
            CaptureEvent::Error(error) => {
                capture_error = Some(error);
                break;
            }
        }
    }
    if let Some(muxer) = muxer.as_mut() {
        muxer
            .finish(&mut sink)
            .map_err(|error| output_error(error, output))?;
        let stats = muxer.stats();
        tracing::info!(?stats, "muxer finished");
    }
    let summary = sink.summary().clone();
    let file = sink
        .into_inner()
        .into_inner()
        .map_err(|error| RecordError::Output {
            path: output.to_owned(),
            source: error.into_error(),
        })?;
    file.sync_all().map_err(|source| RecordError::Output {
        path: output.to_owned(),
        source,
    })?;
    match capture_error {
        // What was recorded up to the failure is in the file, complete and playable.
        Some(error) => Err(error.into()),
        None => Ok(summary),
    }
}

fn find_camera<'a>(
    config: &'a ValidatedConfig,
    name: Option<&str>,
) -> Result<&'a CameraConfig, RecordError> {
    match name {
        None => config.camera.first().ok_or(RecordError::NoCamera),
        Some(name) => config
            .camera
            .iter()
            .find(|camera| camera.name == name)
            .ok_or_else(|| RecordError::UnknownCamera {
                name: name.to_owned(),
                known: config
                    .camera
                    .iter()
                    .map(|camera| camera.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
    }
}

fn all_formats(formats: &[Option<TrackFormat>]) -> Option<Vec<TrackFormat>> {
    formats.iter().cloned().collect()
}

fn push<W: Write>(
    muxer: &mut FragmentMuxer,
    frame: Frame,
    sink: &mut FileSink<W>,
    output: &Path,
) -> Result<(), RecordError> {
    match muxer.push(frame, sink) {
        Ok(()) => Ok(()),
        Err(error) if error.is_frame_error() => {
            tracing::warn!(%error, "frame dropped");
            Ok(())
        }
        Err(error) => Err(output_error(error, output)),
    }
}

/// A sink failure is a failure to write the output file; name the file.
fn output_error(error: MuxError, output: &Path) -> RecordError {
    match error {
        MuxError::Sink(source) => RecordError::Output {
            path: output.to_owned(),
            source,
        },
        other => RecordError::Mux(other),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_writes_everything_in_order_and_counts() {
        let mut sink = FileSink::new(Vec::new());
        sink.stream_header(&Bytes::from_static(b"HEAD")).unwrap();
        sink.fragment_start(&FragmentStart {
            sequence: 0,
            timecode_ms: 0,
            pts_ns: 0,
        })
        .unwrap();
        sink.write(b"tags").unwrap();
        sink.write_payload(&Bytes::from_static(b"frame")).unwrap();
        sink.fragment_end(&FragmentEnd {
            sequence: 0,
            timecode_ms: 0,
            frames: 1,
            bytes: 9,
            first_pts_ns: 0,
            last_pts_ns: 0,
            tracks_present: 1,
        })
        .unwrap();
        sink.stream_end(b"END").unwrap();
        assert_eq!(
            sink.summary(),
            &RecordSummary {
                fragments: 1,
                frames: 1,
                bytes: 16
            }
        );
        assert_eq!(sink.into_inner(), b"HEADtagsframeEND");
    }
}
