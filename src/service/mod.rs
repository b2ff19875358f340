//! `service`: see the README's architecture section.
