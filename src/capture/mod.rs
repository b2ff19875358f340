//! `capture`: see the README's architecture section.
