//! `telemetry`: see the README's architecture section.
