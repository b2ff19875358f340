//! Fault-injection tests (written below).
