//! Docker API proxy for Weft.
//!
//! Nothing is implemented yet. The proxy will sit where the docker CLI is
//! pointed, forward every Docker API call to the real daemon unchanged, and
//! attach containers to the mesh when they start (releasing their address
//! when they are removed), using the local router's API.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
