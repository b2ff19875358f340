//! V4L2 device discovery: what each `/dev/video*` node is and what it can emit, for the
//! `devices` command and for choosing passthrough vs encoding.
//!
//! Invariants:
//! - Nothing a device reports can make this module panic: names are decoded lossily (the v4l
//!   crate's own `query_caps`/`enum_formats` unwrap UTF-8, and a USB product name cut at 32
//!   bytes is not always valid UTF-8), enumeration failures become empty lists.
//! - No `/dev/video*` at all is `Ok(empty)`, not an error.
//! - Stable names come from the udev links under `/dev/v4l/by-id` and `/dev/v4l/by-path`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use v4l::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::v4l_sys::{v4l2_capability, v4l2_fmtdesc};
use v4l::video::Capture as _;

use super::CaptureError;
use super::pipeline::DeviceProbe;

const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const V4L2_CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const V4L2_FMT_FLAG_COMPRESSED: u32 = 0x0001;
const V4L2_FMT_FLAG_EMULATED: u32 = 0x0002;
const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;

/// One `/dev/video*` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The node, e.g. `/dev/video0`.
    pub path: PathBuf,
    /// The udev `/dev/v4l/by-id/...` link pointing at it: stable across reboots and replugs.
    pub by_id: Option<PathBuf>,
    /// The udev `/dev/v4l/by-path/...` link: stable per physical port.
    pub by_path: Option<PathBuf>,
    /// Kernel driver, e.g. `uvcvideo`, `bcm2835-v4l2`.
    pub driver: String,
    /// Device name, e.g. the USB product name.
    pub card: String,
    /// Bus location, e.g. `usb-0000:00:14.0-1`.
    pub bus: String,
    /// The node's V4L2 capability bits (`device_caps` when the driver reports them).
    pub capabilities: u32,
    /// True when the node captures video (single- or multi-planar).
    pub is_capture: bool,
    /// The capture formats, in the driver's order (usually its preference).
    pub formats: Vec<FormatInfo>,
    /// True when one of the formats is H.264 (the camera can be passed through).
    pub emits_h264: bool,
    /// Why the node could not be queried (permissions, busy, not a V4L2 node); the other
    /// fields are then empty.
    pub open_error: Option<String>,
}

/// One pixel format a device can emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatInfo {
    /// The V4L2 fourcc, e.g. `YUYV`, `MJPG`, `H264`.
    pub fourcc: String,
    /// The driver's description, e.g. `YUYV 4:2:2`.
    pub description: String,
    /// A compressed format (MJPEG, H.264, ...), as the driver flags it.
    pub compressed: bool,
    /// Provided by libv4lconvert rather than the hardware.
    pub emulated: bool,
    /// The frame sizes the format supports; empty when the driver does not enumerate them.
    pub sizes: Vec<FrameSizeInfo>,
}

/// A frame size a format supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameSizeInfo {
    /// One exact size.
    Discrete {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
        /// The frame intervals this size supports.
        intervals: Vec<FrameIntervalInfo>,
    },
    /// Any size in a range, in steps (a step of 1 is "continuous").
    Stepwise {
        /// Smallest width in pixels.
        min_width: u32,
        /// Largest width in pixels.
        max_width: u32,
        /// Width increment.
        step_width: u32,
        /// Smallest height in pixels.
        min_height: u32,
        /// Largest height in pixels.
        max_height: u32,
        /// Height increment.
        step_height: u32,
    },
}

/// A frame interval (seconds per frame, as a fraction) a size supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameIntervalInfo {
    /// One interval: `numerator/denominator` seconds per frame (1/30 is 30 fps).
    Discrete {
        /// Seconds per frame, numerator.
        numerator: u32,
        /// Seconds per frame, denominator.
        denominator: u32,
    },
    /// Any interval in a range; fractions as (numerator, denominator) seconds.
    Stepwise {
        /// Shortest interval (highest rate).
        min: (u32, u32),
        /// Longest interval (lowest rate).
        max: (u32, u32),
        /// Increment.
        step: (u32, u32),
    },
}

/// Asks the real devices (implements [`DeviceProbe`] for the pipeline builder).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDevices;

impl DeviceProbe for SystemDevices {
    fn probe(&self, path: &Path) -> Result<DeviceInfo, CaptureError> {
        probe_device(path)
    }
}

/// Every `/dev/video*` node, in numeric order. No nodes (or no `/dev`) is `Ok(empty)`; a node
/// that cannot be opened is listed with [`DeviceInfo::open_error`] set.
pub fn list_devices() -> Result<Vec<DeviceInfo>, CaptureError> {
    list_devices_in(Path::new("/dev"))
}

/// [`list_devices`] over another device directory (`DIR/video*`, links in `DIR/v4l/by-*`).
pub fn list_devices_in(dev_dir: &Path) -> Result<Vec<DeviceInfo>, CaptureError> {
    let entries = match fs::read_dir(dev_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CaptureError::Device {
                path: dev_dir.into(),
                operation: "listing",
                source,
            });
        }
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let index = name.to_str()?.strip_prefix("video")?;
            if index.is_empty() || !index.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            Some((index.parse().ok()?, entry.path()))
        })
        .collect();
    nodes.sort();
    let links = StableLinks::read(dev_dir);
    Ok(nodes
        .into_iter()
        .map(|(_, path)| {
            let mut info = match describe_node(&path) {
                Ok(info) => info,
                Err(error) => DeviceInfo::unreadable(path.clone(), error.to_string()),
            };
            links.fill(&mut info);
            info
        })
        .collect())
}

/// Describes the capture device at `path` (a node or a `/dev/v4l/by-*` link).
///
/// [`CaptureError::DeviceNotFound`] when nothing is there, [`CaptureError::NotACaptureDevice`]
/// for a node that does not capture video (a UVC camera's metadata node, an encoder).
pub fn probe_device(path: &Path) -> Result<DeviceInfo, CaptureError> {
    let mut info = describe_node(path)?;
    if !info.is_capture {
        return Err(CaptureError::NotACaptureDevice {
            path: path.into(),
            driver: info.driver,
            card: info.card,
        });
    }
    let dev_dir = Path::new("/dev");
    StableLinks::read(dev_dir).fill(&mut info);
    Ok(info)
}

fn describe_node(path: &Path) -> Result<DeviceInfo, CaptureError> {
    let device_error = |operation: &'static str| {
        move |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                CaptureError::DeviceNotFound { path: path.into() }
            } else {
                CaptureError::Device {
                    path: path.into(),
                    operation,
                    source,
                }
            }
        }
    };
    // Checked first: it also rejects paths with NUL bytes, which `Device::with_path` unwraps.
    fs::metadata(path).map_err(device_error("stat"))?;
    let device = v4l::Device::with_path(path).map_err(device_error("open"))?;
    let capability = query_capability(&device).map_err(device_error("VIDIOC_QUERYCAP"))?;
    let capabilities = if capability.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
        capability.device_caps
    } else {
        capability.capabilities
    };
    let is_capture = capabilities & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE) != 0;
    let formats = if is_capture {
        enumerate_formats(&device)
    } else {
        Vec::new()
    };
    Ok(DeviceInfo {
        path: path.into(),
        by_id: None,
        by_path: None,
        driver: c_string(&capability.driver),
        card: c_string(&capability.card),
        bus: c_string(&capability.bus_info),
        capabilities,
        is_capture,
        emits_h264: formats.iter().any(FormatInfo::is_h264),
        formats,
        open_error: None,
    })
}

fn query_capability(device: &v4l::Device) -> io::Result<v4l2_capability> {
    // SAFETY: v4l2_capability is plain integers and byte arrays, for which all-zero is valid;
    // VIDIOC_QUERYCAP writes at most size_of::<v4l2_capability>() bytes into it.
    unsafe {
        let mut capability: v4l2_capability = std::mem::zeroed();
        v4l::v4l2::ioctl(
            device.handle().fd(),
            v4l::v4l2::vidioc::VIDIOC_QUERYCAP,
            std::ptr::from_mut(&mut capability).cast(),
        )?;
        Ok(capability)
    }
}

/// The single-planar capture formats, each with its sizes and, for discrete sizes, intervals.
fn enumerate_formats(device: &v4l::Device) -> Vec<FormatInfo> {
    let mut formats = Vec::new();
    // Drivers end the list with EINVAL; the cap guards against one that never does.
    for index in 0..256 {
        // SAFETY: v4l2_fmtdesc is plain integers and a byte array (all-zero is valid);
        // VIDIOC_ENUM_FMT reads index/type and writes within the struct.
        let description = unsafe {
            let mut description: v4l2_fmtdesc = std::mem::zeroed();
            description.index = index;
            description.type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
            match v4l::v4l2::ioctl(
                device.handle().fd(),
                v4l::v4l2::vidioc::VIDIOC_ENUM_FMT,
                std::ptr::from_mut(&mut description).cast(),
            ) {
                Ok(()) => description,
                Err(_) => break,
            }
        };
        let fourcc = FourCC::from(description.pixelformat);
        formats.push(FormatInfo {
            fourcc: String::from_utf8_lossy(&fourcc.repr).trim_end().to_owned(),
            description: c_string(&description.description),
            compressed: description.flags & V4L2_FMT_FLAG_COMPRESSED != 0,
            emulated: description.flags & V4L2_FMT_FLAG_EMULATED != 0,
            sizes: enumerate_sizes(device, fourcc),
        });
    }
    formats
}

fn enumerate_sizes(device: &v4l::Device, fourcc: FourCC) -> Vec<FrameSizeInfo> {
    // Drivers that do not implement VIDIOC_ENUM_FRAMESIZES simply list no sizes.
    let Ok(sizes) = device.enum_framesizes(fourcc) else {
        return Vec::new();
    };
    sizes
        .into_iter()
        .map(|size| match size.size {
            FrameSizeEnum::Discrete(discrete) => FrameSizeInfo::Discrete {
                width: discrete.width,
                height: discrete.height,
                intervals: enumerate_intervals(device, fourcc, discrete.width, discrete.height),
            },
            FrameSizeEnum::Stepwise(stepwise) => FrameSizeInfo::Stepwise {
                min_width: stepwise.min_width,
                max_width: stepwise.max_width,
                step_width: stepwise.step_width,
                min_height: stepwise.min_height,
                max_height: stepwise.max_height,
                step_height: stepwise.step_height,
            },
        })
        .collect()
}

fn enumerate_intervals(
    device: &v4l::Device,
    fourcc: FourCC,
    width: u32,
    height: u32,
) -> Vec<FrameIntervalInfo> {
    let Ok(intervals) = device.enum_frameintervals(fourcc, width, height) else {
        return Vec::new();
    };
    intervals
        .into_iter()
        .map(|interval| match interval.interval {
            FrameIntervalEnum::Discrete(fraction) => FrameIntervalInfo::Discrete {
                numerator: fraction.numerator,
                denominator: fraction.denominator,
            },
            FrameIntervalEnum::Stepwise(stepwise) => FrameIntervalInfo::Stepwise {
                min: (stepwise.min.numerator, stepwise.min.denominator),
                max: (stepwise.max.numerator, stepwise.max.denominator),
                step: (stepwise.step.numerator, stepwise.step.denominator),
            },
        })
        .collect()
}

/// A NUL-terminated fixed-size kernel string, decoded lossily.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default())
        .trim()
        .to_owned()
}

/// The udev symlinks under `/dev/v4l/by-id` and `/dev/v4l/by-path`, resolved once.
struct StableLinks {
    by_id: Vec<(PathBuf, PathBuf)>,
    by_path: Vec<(PathBuf, PathBuf)>,
}

impl StableLinks {
    fn read(dev_dir: &Path) -> Self {
        let resolve = |dir: PathBuf| -> Vec<(PathBuf, PathBuf)> {
            let Ok(entries) = fs::read_dir(dir) else {
                return Vec::new();
            };
            let mut links: Vec<(PathBuf, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let link = entry.path();
                    let target = fs::canonicalize(&link).ok()?;
                    Some((target, link))
                })
                .collect();
            links.sort();
            links
        };
        StableLinks {
            by_id: resolve(dev_dir.join("v4l/by-id")),
            by_path: resolve(dev_dir.join("v4l/by-path")),
        }
    }

    fn fill(&self, info: &mut DeviceInfo) {
        let Ok(node) = fs::canonicalize(&info.path) else {
            return;
        };
        let find = |links: &[(PathBuf, PathBuf)]| {
            links
                .iter()
                .find(|(target, _)| *target == node)
                .map(|(_, link)| link.clone())
        };
        info.by_id = find(&self.by_id);
        info.by_path = find(&self.by_path);
    }
}

impl DeviceInfo {
    fn unreadable(path: PathBuf, error: String) -> Self {
        DeviceInfo {
            path,
            by_id: None,
            by_path: None,
            driver: String::new(),
            card: String::new(),
            bus: String::new(),
            capabilities: 0,
            is_capture: false,
            formats: Vec::new(),
            emits_h264: false,
            open_error: Some(error),
        }
    }

    /// A capture device with the given formats (for probes that do not ask a kernel).
    pub fn from_formats(path: PathBuf, formats: Vec<FormatInfo>) -> Self {
        DeviceInfo {
            path,
            by_id: None,
            by_path: None,
            driver: String::new(),
            card: String::new(),
            bus: String::new(),
            capabilities: V4L2_CAP_VIDEO_CAPTURE,
            is_capture: true,
            emits_h264: formats.iter().any(FormatInfo::is_h264),
            formats,
            open_error: None,
        }
    }

    /// One line naming every format and its sizes, e.g.
    /// `YUYV 640x480, 1280x720; MJPG 1920x1080`, for error messages.
    pub fn offer_summary(&self) -> String {
        if self.formats.is_empty() {
            return "no capture formats".into();
        }
        let mut summary = String::new();
        for (index, format) in self.formats.iter().enumerate() {
            if index > 0 {
                summary.push_str("; ");
            }
            summary.push_str(&format.fourcc);
            for (size_index, size) in format.sizes.iter().enumerate() {
                summary.push_str(if size_index == 0 { " " } else { ", " });
                summary.push_str(&size.to_string());
            }
        }
        summary
    }
}

impl FormatInfo {
    /// The camera encodes H.264 itself (fourcc `H264`).
    pub fn is_h264(&self) -> bool {
        self.fourcc == "H264"
    }

    /// Motion JPEG (fourcc `MJPG` or `JPEG`).
    pub fn is_jpeg(&self) -> bool {
        matches!(self.fourcc.as_str(), "MJPG" | "JPEG")
    }

    /// Whether `width`x`height` is among the listed sizes; `None` when the driver lists none.
    pub fn size_listed(&self, width: u32, height: u32) -> Option<bool> {
        if self.sizes.is_empty() {
            return None;
        }
        Some(self.sizes.iter().any(|size| size.contains(width, height)))
    }
}

impl FrameSizeInfo {
    /// Whether this size entry admits `width`x`height`.
    pub fn contains(&self, width: u32, height: u32) -> bool {
        match *self {
            FrameSizeInfo::Discrete {
                width: w,
                height: h,
                ..
            } => (w, h) == (width, height),
            FrameSizeInfo::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => {
                let on_step = |value: u32, min: u32, step: u32| {
                    step == 0 || (value - min).is_multiple_of(step)
                };
                (min_width..=max_width).contains(&width)
                    && (min_height..=max_height).contains(&height)
                    && on_step(width, min_width, step_width)
                    && on_step(height, min_height, step_height)
            }
        }
    }
}

impl fmt::Display for FrameSizeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameSizeInfo::Discrete { width, height, .. } => write!(f, "{width}x{height}"),
            FrameSizeInfo::Stepwise {
                min_width,
                max_width,
                min_height,
                max_height,
                ..
            } => write!(f, "{min_width}x{min_height}-{max_width}x{max_height}"),
        }
    }
}

/// Frames per second for an interval of `numerator/denominator` seconds.
fn fps(numerator: u32, denominator: u32) -> String {
    if numerator == 0 {
        return "?".into();
    }
    let rate = f64::from(denominator) / f64::from(numerator);
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.2}")
    }
}

impl fmt::Display for FrameIntervalInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameIntervalInfo::Discrete {
                numerator,
                denominator,
            } => f.write_str(&fps(numerator, denominator)),
            // The slowest interval is the lowest rate.
            FrameIntervalInfo::Stepwise { min, max, .. } => {
                write!(f, "{}-{}", fps(max.0, max.1), fps(min.0, min.1))
            }
        }
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(by_id) = &self.by_id {
            write!(f, "  (stable: {})", by_id.display())?;
        } else if let Some(by_path) = &self.by_path {
            write!(f, "  (stable: {})", by_path.display())?;
        }
        writeln!(f)?;
        if let Some(error) = &self.open_error {
            return writeln!(f, "  cannot be queried: {error}");
        }
        writeln!(
            f,
            "  card: {}   driver: {}   bus: {}",
            self.card, self.driver, self.bus
        )?;
        writeln!(
            f,
            "  capture: {}   H.264: {}",
            if self.is_capture { "yes" } else { "no" },
            if self.emits_h264 {
                "yes (passthrough)"
            } else {
                "no"
            }
        )?;
        for format in &self.formats {
            let mut notes = String::new();
            if format.compressed {
                notes.push_str(" [compressed]");
            }
            if format.emulated {
                notes.push_str(" [emulated]");
            }
            writeln!(f, "  {:<4}  {}{notes}", format.fourcc, format.description)?;
            for size in &format.sizes {
                write!(f, "        {size}")?;
                if let FrameSizeInfo::Discrete { intervals, .. } = size
                    && !intervals.is_empty()
                {
                    f.write_str(" @ ")?;
                    for (index, interval) in intervals.iter().enumerate() {
                        if index > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{interval}")?;
                    }
                    f.write_str(" fps")?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_camera() -> DeviceInfo {
        let mut info = DeviceInfo::from_formats(
            "/dev/video0".into(),
            vec![
                FormatInfo {
                    fourcc: "YUYV".into(),
                    description: "YUYV 4:2:2".into(),
                    compressed: false,
                    emulated: false,
                    sizes: vec![FrameSizeInfo::Discrete {
                        width: 640,
                        height: 480,
                        intervals: vec![
                            FrameIntervalInfo::Discrete {
                                numerator: 1,
                                denominator: 30,
                            },
                            FrameIntervalInfo::Discrete {
                                numerator: 2,
                                denominator: 15,
                            },
                        ],
                    }],
                },
                FormatInfo {
                    fourcc: "H264".into(),
                    description: "H.264".into(),
                    compressed: true,
                    emulated: false,
                    sizes: vec![FrameSizeInfo::Stepwise {
                        min_width: 160,
                        max_width: 1920,
                        step_width: 16,
                        min_height: 120,
                        max_height: 1080,
                        step_height: 8,
                    }],
                },
            ],
        );
        info.by_id = Some("/dev/v4l/by-id/usb-Cam-video-index0".into());
        info.driver = "uvcvideo".into();
        info.card = "HD Cam".into();
        info.bus = "usb-0000:00:14.0-1".into();
        info
    }

    #[test]
    fn display_lists_formats_sizes_and_rates() {
        let text = sample_camera().to_string();
        assert_eq!(
            text,
            "/dev/video0  (stable: /dev/v4l/by-id/usb-Cam-video-index0)\n\
             \x20 card: HD Cam   driver: uvcvideo   bus: usb-0000:00:14.0-1\n\
             \x20 capture: yes   H.264: yes (passthrough)\n\
             \x20 YUYV  YUYV 4:2:2\n\
             \x20       640x480 @ 30, 7.50 fps\n\
             \x20 H264  H.264 [compressed]\n\
             \x20       160x120-1920x1080\n"
        );
    }

    #[test]
    fn stepwise_sizes_respect_steps() {
        let camera = sample_camera();
        let h264 = camera.formats.get(1).expect("two formats");
        assert_eq!(h264.size_listed(1280, 720), Some(true));
        assert_eq!(h264.size_listed(1281, 720), Some(false));
        assert_eq!(h264.size_listed(3840, 2160), Some(false));
        let yuyv = camera.formats.first().expect("two formats");
        assert_eq!(yuyv.size_listed(640, 480), Some(true));
        assert_eq!(yuyv.size_listed(1280, 720), Some(false));
    }

    #[test]
    fn summary_names_every_format() {
        assert_eq!(
            sample_camera().offer_summary(),
            "YUYV 640x480; H264 160x120-1920x1080"
        );
    }

    #[test]
    fn kernel_strings_are_cut_at_nul_and_decoded_lossily() {
        assert_eq!(c_string(b"uvcvideo\0\0\0\0"), "uvcvideo");
        // A multi-byte character cut by the kernel's 32-byte limit.
        assert_eq!(c_string(b"Cam \xe6\x91"), "Cam \u{fffd}");
        assert_eq!(c_string(b""), "");
    }

    #[test]
    fn missing_path_is_device_not_found() {
        let error = probe_device(Path::new("/nonexistent/video42")).expect_err("no device");
        assert!(
            matches!(&error, CaptureError::DeviceNotFound { path } if path == Path::new("/nonexistent/video42"))
        );
    }

    #[test]
    fn path_with_nul_is_an_error_not_a_panic() {
        let error = probe_device(Path::new("/dev/vid\0eo0")).expect_err("bad path");
        assert!(matches!(error, CaptureError::Device { .. }), "{error:?}");
    }

    #[test]
    fn listing_a_missing_directory_is_empty() {
        let listed = list_devices_in(Path::new("/nonexistent-dev")).expect("ok");
        assert!(listed.is_empty());
    }

    #[test]
    fn listing_reports_unreadable_nodes_with_their_stable_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = dir.path().join("video2");
        fs::write(&node, b"not a device").expect("write");
        fs::write(dir.path().join("video10"), b"").expect("write");
        fs::write(dir.path().join("videoX"), b"").expect("write");
        fs::write(dir.path().join("vbi0"), b"").expect("write");
        let by_id = dir.path().join("v4l/by-id");
        fs::create_dir_all(&by_id).expect("mkdir");
        std::os::unix::fs::symlink(&node, by_id.join("usb-Cam-video-index0")).expect("link");

        let listed = list_devices_in(dir.path()).expect("listing");
        let paths: Vec<_> = listed.iter().map(|info| info.path.clone()).collect();
        assert_eq!(paths, vec![node.clone(), dir.path().join("video10")]);
        let first = listed.first().expect("two entries");
        assert_eq!(first.by_id, Some(by_id.join("usb-Cam-video-index0")));
        let error = first
            .open_error
            .as_deref()
            .expect("a file is not a V4L2 node");
        assert!(error.contains("VIDIOC_QUERYCAP"), "{error}");
        assert!(first.to_string().contains("cannot be queried"));
    }

    #[test]
    fn this_machine_lists_without_error() {
        // CI machines have no cameras; a developer's may. Either way: no error, no panic.
        let listed = list_devices().expect("listing /dev");
        for info in listed {
            assert!(info.path.starts_with("/dev"));
        }
    }
}
