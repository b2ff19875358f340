//! `buffer`: see the README's architecture section.
