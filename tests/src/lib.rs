//! End-to-end tests for Weft.
//!
//! Nothing is implemented yet. This crate will build hosts and pods as
//! network namespaces joined by an underlay bridge, run real routers in them,
//! and check reachability, encryption on the wire, restarts and partitions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
