//! The router's side of its local API: HTTP/1.1 and JSON over a unix socket.
//!
//! `weft status` and the other client commands, the CNI plugin, the Docker
//! proxy and scripts talk to the running router through it. The routes,
//! bodies and error codes are documented in `docs/api.md`; the JSON types,
//! the status of each error code, the retry rule and the clients are in the
//! `weft-api` crate ([`weft_api`]), which every client shares.
//!
//! - [`server`]: the routes, served by [`serve`] on a socket bound by
//!   [`bind_socket`], over a [`Backend`] that the daemon implements. The
//!   server knows nothing of the daemon, so it is tested with a fake.
//! - [`convert`]: the router's IPAM values and errors as the API's types.
//! - [`render`] and [`cli`]: the `weft` commands' text output, over
//!   [`weft_api::client::Client`].
//!
//! The socket is the only access control: it is mode 0660 in a directory
//! of mode 0755, so only root and the socket's group may use the API.

pub mod cli;
pub mod convert;
pub mod render;
pub mod server;

pub use server::{Backend, BindError, bind_socket, serve};
