//! The `weft` commands that talk to a running router: ask, then print.
//!
//! Replies go to `out` (stdout in `weft`), as text from [`render`] or, with
//! `--json`, as the reply itself. Commands that change something print
//! nothing on success, except `ipam allocate`, whose only line is the
//! address, and `rmpeer`, which says how far the reclaim got.

use std::io::{self, Write};

use serde::Serialize;
use weft_api::ClientError;
use weft_api::client::Client;
use weft_api::types::{AllocateRequest, Allocations, Peers, ReleaseRequest};

use super::render;
use crate::config::{Command, IpamArgs, IpamCommand, PeerArgs, RmpeerArgs, ShowArgs};

/// Runs a client command against the router at the command's `--api-socket`.
///
/// # Errors
/// [`CliError`]; its message is meant for the operator as it is.
pub async fn run(command: Command, out: &mut impl Write) -> Result<(), CliError> {
    let client = match command.api_socket() {
        Some(path) => Client::new(path),
        None => return Err(CliError::NotAClientCommand),
    };
    match command {
        Command::Status(ShowArgs { json, .. }) => {
            let status = client.status().await?;
            if json {
                print_json(out, &status)
            } else {
                print(out, &render::status(&status))
            }
        }
        Command::Peers(ShowArgs { json, .. }) => {
            let peers = client.peers().await?;
            if json {
                print_json(out, &Peers { peers })
            } else {
                print(out, &render::peers(&peers))
            }
        }
        Command::Connect(PeerArgs { peer, .. }) => Ok(client.connect(&peer.to_string()).await?),
        Command::Forget(PeerArgs { peer, .. }) => Ok(client.forget(&peer.to_string()).await?),
        Command::Rmpeer(RmpeerArgs { name, gone, .. }) => {
            let view = client.rmpeer(&name.to_string(), gone).await?;
            print(out, &format!("{}\n", render::reclaim(&view)))
        }
        Command::Ipam(IpamArgs {
            command: None, json, ..
        }) => {
            let ring = client.ring().await?;
            if json {
                print_json(out, &ring)
            } else {
                print(out, &render::ring(&ring))
            }
        }
        Command::Ipam(IpamArgs {
            command: Some(IpamCommand::Allocate { id, ip, json, .. }),
            ..
        }) => {
            let req = AllocateRequest {
                ip: ip.map(|ip| ip.to_string()),
                ..AllocateRequest::any(id)
            };
            let reply = client.allocate(&req).await?;
            if json {
                print_json(out, &reply)
            } else {
                print(out, &format!("{}\n", reply.address))
            }
        }
        Command::Ipam(IpamArgs {
            command: Some(IpamCommand::Allocations { json, .. }),
            ..
        }) => {
            let list = client.allocations().await?;
            if json {
                print_json(out, &Allocations { allocations: list })
            } else {
                print(out, &render::allocations(&list))
            }
        }
        Command::Ipam(IpamArgs {
            command: Some(IpamCommand::Release { id, .. }),
            ..
        }) => {
            client.release(&ReleaseRequest::new(id)).await?;
            Ok(())
        }
        Command::Reset(_) => Ok(client.reset().await?),
        Command::Ready(_) => {
            let status = client.status().await?;
            match status.ipam.problem {
                None => print(out, "ready\n"),
                Some(problem) => Err(CliError::NotReady(problem)),
            }
        }
        Command::Launch(_) | Command::Secret | Command::InstallCni(_) | Command::Env(_) => {
            Err(CliError::NotAClientCommand)
        }
    }
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// `weft ready`: the router answers but has no usable address ring yet.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The command does not talk to a router (a bug in the caller).
    #[error("this command does not talk to a running router")]
    NotAClientCommand,
}

fn print(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

fn print_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}
