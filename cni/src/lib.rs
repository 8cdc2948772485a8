//! CNI plugins for Weft.
//!
//! Nothing is implemented yet. This crate will own two plugin binaries:
//! `weft-net`, the main plugin (veth into the pod namespace, an address from
//! the local router, routes, result JSON), and `weft-ipam`, the IPAM half
//! alone for use with other main plugins. Both talk to the router over its
//! local API.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
