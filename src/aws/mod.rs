//! `aws`: see the README's architecture section.
