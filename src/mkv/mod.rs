//! `mkv`: see the README's architecture section.
