//! The embedded `weft-wait` binary.
//!
//! Not written yet.
