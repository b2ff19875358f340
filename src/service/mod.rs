//! The daemon's jobs and their wiring: each job connects capture → mkv → (file | buffer →
//! upload) for one camera. Protocol logic lives in the modules; this layer only connects them.

pub mod camera;
pub mod record;
