//! `upload`: see the README's architecture section.
