//! The container's mesh interface `ethwe` and the host's side of it.
//!
//! Not written yet: see the contract in the session notes.
