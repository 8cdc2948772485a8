//! The local router's API (docs/api.md) as the proxy uses it: what to ask
//! for ([`Want`]), the network containers join ([`Network`]), and failures
//! worded for `docker` users, on top of the async client of the `weft-api`
//! crate ([`weft_api::client::Client`]).
//!
//! The proxy depends on the API, not on the router's crate, so that it runs
//! as well beside a router as inside one (`weft launch --proxy`). Whether a
//! failure is worth retrying is the API's one rule
//! ([`ClientError::is_transient`]).

use std::error::Error as StdError;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use weft_api::ClientError;
pub use weft_api::DEFAULT_SOCKET;
use weft_api::types::{AllocateRequest, AllocationView, ReleaseRequest};

/// A client of the router's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    api: weft_api::client::Client,
}

/// What the proxy needs from `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The pod range.
    pub range: Ipv4Net,
    /// The MTU of pod interfaces.
    pub mtu: u32,
}

/// What to ask the router for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Any free address.
    Any,
    /// This address.
    Addr(Ipv4Addr),
    /// Any free address in this subnet.
    Within(Ipv4Net),
}

/// A failed call.
#[derive(Debug)]
#[non_exhaustive]
pub enum RouterError {
    /// The request failed: no router, no answer in time, a refusal, or a
    /// broken reply.
    Call(ClientError),
    /// The router answers but cannot give out addresses yet (no address
    /// ring); `problem` says what it waits for.
    NotReady {
        /// The router's words.
        problem: String,
    },
    /// The router's answer cannot serve containers (no data plane, or a
    /// value that does not parse).
    Unusable {
        /// The socket.
        socket: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl RouterError {
    /// Whether trying again later may work (router down, busy, no ring yet).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Call(e) => e.is_transient(),
            Self::NotReady { .. } => true,
            Self::Unusable { .. } => false,
        }
    }
}

impl From<ClientError> for RouterError {
    fn from(e: ClientError) -> Self {
        Self::Call(e)
    }
}

impl fmt::Display for RouterError {
    /// The client's own words, except where a `docker` user needs to be
    /// told which daemon refused: they read these after "Error response
    /// from daemon:".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call(ClientError::NotRunning { path }) => write!(
                f,
                "the weft router is not running (nothing answers at {}); start it with `weft launch`",
                path.display()
            ),
            Self::Call(ClientError::Api { error, .. }) => write!(f, "the weft router refused: {error}"),
            Self::Call(e) => e.fmt(f),
            Self::NotReady { problem } => write!(f, "the weft router cannot give out addresses yet: {problem}"),
            Self::Unusable { socket, reason } => write!(
                f,
                "the weft router at {} cannot serve containers: {reason}",
                socket.display()
            ),
        }
    }
}

impl StdError for RouterError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Call(e) => e.source(),
            Self::NotReady { .. } | Self::Unusable { .. } => None,
        }
    }
}

impl Client {
    /// A client of the router listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            api: weft_api::client::Client::new(socket),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        self.api.path()
    }

    /// The pod range and MTU; an error while the router cannot allocate
    /// (no ring yet), saying why.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn network(&self) -> Result<Network, RouterError> {
        let status = self.api.status().await?;
        if let Some(problem) = status.ipam.problem {
            return Err(RouterError::NotReady { problem });
        }
        let range = status
            .ipam
            .range
            .parse()
            .map_err(|_| self.unusable(format!("its pod range {:?} is not an IPv4 CIDR", status.ipam.range)))?;
        let mtu = status
            .dataplane
            .map(|d| u32::from(d.mtu))
            .ok_or_else(|| self.unusable("it runs no data plane".to_owned()))?;
        Ok(Network { range, mtu })
    }

    /// An address for container `id` on interface `iface`; the same key gets
    /// the same address again.
    ///
    /// # Errors
    /// As [`RouterError`]; a refusal with code `exhausted`, `in_use`,
    /// `out_of_range`… when the router cannot give what is asked.
    pub async fn allocate(&self, id: &str, iface: &str, want: Want) -> Result<Ipv4Net, RouterError> {
        let (ip, net) = match want {
            Want::Any => (None, None),
            Want::Addr(ip) => (Some(ip.to_string()), None),
            Want::Within(net) => (None, Some(net.to_string())),
        };
        let req = AllocateRequest {
            id: id.to_owned(),
            iface: Some(iface.to_owned()),
            ip,
            net,
        };
        let reply = self.api.allocate(&req).await?;
        reply
            .address
            .parse()
            .map_err(|_| self.unusable(format!("the allocated address {:?} does not parse", reply.address)))
    }

    /// Gives the address of `id` on `iface` back (nothing if it has none).
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn release(&self, id: &str, iface: &str) -> Result<(), RouterError> {
        let req = ReleaseRequest {
            iface: Some(iface.to_owned()),
            ..ReleaseRequest::new(id)
        };
        self.api.release(&req).await?;
        Ok(())
    }

    /// Every allocation this router holds.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn allocations(&self) -> Result<Vec<AllocationView>, RouterError> {
        Ok(self.api.allocations().await?)
    }

    /// Whether a router answers `GET /v1/healthz`.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn health(&self) -> Result<(), RouterError> {
        self.api.healthz().await?;
        Ok(())
    }

    fn unusable(&self, reason: String) -> RouterError {
        RouterError::Unusable {
            socket: self.socket().to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_api::ErrorCode;

    use super::*;

    #[tokio::test]
    async fn no_router_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("weft.sock"));
        let err = client.health().await.unwrap_err();
        assert!(err.is_transient());
        let msg = err.to_string();
        assert!(msg.starts_with("the weft router is not running"), "{msg}");
        assert!(msg.contains("weft launch"), "{msg}");
    }

    #[tokio::test]
    async fn refusals_keep_the_routers_message() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            let body = r#"{"error":"no free address is left","code":"exhausted"}"#;
            let reply = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let err = Client::new(&path)
            .allocate("docker:x", "ethwe", Want::Any)
            .await
            .unwrap_err();
        match &err {
            RouterError::Call(ClientError::Api { status, error }) => {
                assert_eq!(error.code, ErrorCode::Exhausted);
                assert_eq!(*status, 409);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!err.is_transient());
        assert_eq!(err.to_string(), "the weft router refused: no free address is left");
    }

    #[test]
    fn not_ready_is_transient_and_says_why() {
        let err = RouterError::NotReady {
            problem: "2 of the 3 routers have met".into(),
        };
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "the weft router cannot give out addresses yet: 2 of the 3 routers have met"
        );
    }
}
