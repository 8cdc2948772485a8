//! Attaching containers to the mesh and giving their addresses back.
//!
//! Everything here is idempotent and safe to run from several places at once
//! (the `start` reply, the event stream, reconciliation): calls for one
//! container are serialised, an attached container is recognised and left
//! alone, and the router gives the same allocation key the same address.
//!
//! Allocations are keyed `docker:<full container id>`, interface `ethwe` for
//! the first address and `ethwe:1`, `ethwe:2`… for more, so that the router's
//! list of allocations alone says which containers hold addresses, and a
//! restarted container gets its addresses back.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use serde_json::Value;
use tracing::{debug, info, warn};
use weft_podlink::LinkError;

use crate::cidr::{self, CidrError, Entry};
use crate::create;
use crate::docker::{self, DockerError};
use crate::link;
use crate::router::{self, RouterError, Want};

/// The prefix of the proxy's allocation ids.
pub const ID_PREFIX: &str = "docker:";

/// The router allocation id of a container.
pub fn allocation_id(container_id: &str) -> String {
    format!("{ID_PREFIX}{container_id}")
}

/// The allocation interface of the `index`th address of a container.
pub fn iface_label(index: usize) -> String {
    match index {
        0 => link::IFNAME.to_owned(),
        i => format!("{}:{i}", link::IFNAME),
    }
}

/// What [`Attacher::attach`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// The container was not created to join the mesh; nothing done.
    NotOurs,
    /// The container is not running (it may already have exited).
    NotRunning,
    /// It was attached already.
    Existing,
    /// Attached now, with these addresses.
    Attached(Vec<Ipv4Net>),
}

/// A failure to attach or release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The daemon could not say what the container is.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The container's `WEFT_CIDR` does not parse (set outside the proxy).
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// The router could not give the address asked for.
    #[error("no address for {entry}: {source}")]
    Allocate {
        /// The `WEFT_CIDR` entry.
        entry: Entry,
        /// The router's answer.
        #[source]
        source: RouterError,
    },
    /// The router could not be asked.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The interface could not be made.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The daemon's description of the container lacks what the proxy needs.
    #[error("the Docker daemon's description of container {container} has no {field}")]
    Inspect {
        /// The container as named.
        container: String,
        /// The missing field.
        field: &'static str,
    },
}

/// What a reconciliation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Addresses given back for containers that no longer exist.
    pub released: usize,
    /// Running containers attached that were not.
    pub attached: usize,
}

/// Attaches and releases through one daemon and one router.
#[derive(Debug)]
pub struct Attacher {
    docker: docker::Client,
    router: router::Client,
    /// One lock per container being worked on; entries go when unused.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Attacher {
    /// An attacher using `docker` and `router`.
    pub fn new(docker: docker::Client, router: router::Client) -> Self {
        Self {
            docker,
            router,
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// The router client.
    pub fn router(&self) -> &router::Client {
        &self.router
    }

    /// Attaches container `reference` (a name or id) if it was created to
    /// join the mesh and is running.
    ///
    /// # Errors
    /// As [`AttachError`]; addresses already allocated stay allocated to the
    /// container (a retry gets the same ones; removal releases them).
    pub async fn attach(&self, reference: &str) -> Result<Outcome, AttachError> {
        let first = self.docker.inspect_container(reference).await?;
        let id = str_field(&first, "Id", reference)?.to_owned();
        let lock = self.lock_for(&id);
        let outcome = {
            let _guard = lock.lock().await;
            self.attach_locked(&id).await
        };
        drop(lock);
        self.forget_idle_locks();
        outcome
    }

    async fn attach_locked(&self, id: &str) -> Result<Outcome, AttachError> {
        // Inspected again under the lock: the container may have restarted.
        let info = self.docker.inspect_container(id).await?;
        let config = info.get("Config").cloned().unwrap_or(Value::Null);
        if !create::is_wrapped(&config) {
            return Ok(Outcome::NotOurs);
        }
        let env = config.get("Env").and_then(Value::as_array);
        let Some(entries) = cidr::from_env(env.into_iter().flatten().filter_map(Value::as_str))? else {
            return Ok(Outcome::NotOurs);
        };
        let state = info.get("State");
        let running = state.and_then(|s| s.get("Running")).and_then(Value::as_bool) == Some(true);
        let pid = state.and_then(|s| s.get("Pid")).and_then(Value::as_u64).unwrap_or(0);
        if !running || pid == 0 {
            return Ok(Outcome::NotRunning);
        }
        match self.wire(id, pid, &entries).await {
            // A short-lived container may be done before its second attach
            // (the start reply and the start event both attach): its
            // namespace is gone with it, and there is nothing left to do.
            Err(AttachError::Link(e)) if !self.runs_as(id, pid).await => {
                debug!(container = %short(id), error = %e, "exited while being attached");
                Ok(Outcome::NotRunning)
            }
            other => other,
        }
    }

    /// Whether container `id` still runs as process `pid`. The kernel is
    /// asked first: dockerd learns of an exit a moment after it happens.
    async fn runs_as(&self, id: &str, pid: u64) -> bool {
        if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_err() {
            return false;
        }
        let Ok(info) = self.docker.inspect_container(id).await else {
            return false;
        };
        let state = info.get("State");
        state.and_then(|s| s.get("Running")).and_then(Value::as_bool) == Some(true)
            && state.and_then(|s| s.get("Pid")).and_then(Value::as_u64) == Some(pid)
    }

    async fn wire(&self, id: &str, pid: u64, entries: &[Entry]) -> Result<Outcome, AttachError> {
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if link::is_attached(&netns).await? {
            return Ok(Outcome::Existing);
        }
        let network = self.router.network().await?;
        let alloc_id = allocation_id(id);
        let mut addrs = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let (want, len) = match *entry {
                Entry::Auto => (Want::Any, None),
                Entry::Addr(ip, len) => (Want::Addr(ip), len),
                Entry::Within(net) => (Want::Within(net), Some(net.prefix_len())),
            };
            let got = self
                .router
                .allocate(&alloc_id, &iface_label(i), want)
                .await
                .map_err(|source| AttachError::Allocate { entry: *entry, source })?;
            let len = len.unwrap_or(network.range.prefix_len());
            addrs.push(Ipv4Net::new(got.addr(), len).expect("prefix lengths are checked to be at most 32"));
        }
        let host_veth = link::host_veth_name(id);
        let spec = link::spec(&netns, &host_veth, &addrs, network.range, network.mtu);
        match weft_podlink::attach(&spec).await?.outcome {
            weft_podlink::Outcome::Existing => Ok(Outcome::Existing),
            weft_podlink::Outcome::Created => {
                info!(container = %short(id), addresses = ?addrs, %host_veth, "attached to the mesh");
                Ok(Outcome::Attached(addrs))
            }
        }
    }

    /// Gives back every address container `id` (the full id) holds.
    /// Returns how many there were.
    ///
    /// # Errors
    /// The router could not be asked; a later [`Attacher::reconcile`] retries.
    pub async fn release(&self, id: &str) -> Result<usize, AttachError> {
        let alloc_id = allocation_id(id);
        let held: Vec<_> = self
            .router
            .allocations()
            .await?
            .into_iter()
            .filter(|a| a.id == alloc_id)
            .collect();
        for a in &held {
            self.router.release(&a.id, &a.iface).await?;
            info!(container = %short(id), address = %a.address, iface = %a.iface, "released");
        }
        Ok(held.len())
    }

    /// Brings the router's allocations and the interfaces in line with the
    /// daemon's containers: addresses of containers that no longer exist
    /// are released, and running containers made to join the mesh but not
    /// attached (started while the proxy was away) are attached.
    ///
    /// # Errors
    /// The daemon or the router could not be asked. Failures for single
    /// containers are logged and do not stop the rest.
    pub async fn reconcile(&self) -> Result<Reconciled, AttachError> {
        // Allocations first: one made after this list was taken is not
        // looked at, so a container starting now is never released.
        let allocations = self.router.allocations().await?;
        let containers = self.docker.list_containers().await?;
        let existing: HashSet<&str> = containers
            .iter()
            .filter_map(|c| c.get("Id").and_then(Value::as_str))
            .collect();
        let mut done = Reconciled::default();
        for a in &allocations {
            let Some(id) = a.id.strip_prefix(ID_PREFIX) else {
                continue;
            };
            if existing.contains(id) {
                continue;
            }
            self.router.release(&a.id, &a.iface).await?;
            info!(container = %short(id), address = %a.address, iface = %a.iface, "released: the container is gone");
            done.released += 1;
        }
        let running = containers
            .iter()
            .filter(|c| c.get("State").and_then(Value::as_str) == Some("running"))
            .filter_map(|c| c.get("Id").and_then(Value::as_str));
        for id in running {
            match self.attach(id).await {
                Ok(Outcome::Attached(_)) => done.attached += 1,
                Ok(other) => debug!(container = %short(id), ?other, "reconcile: nothing to do"),
                Err(AttachError::Docker(e)) if e.is_not_found() => {}
                Err(e) => warn!(container = %short(id), error = %e, "reconcile: cannot attach"),
            }
        }
        Ok(done)
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(busy.entry(id.to_owned()).or_default())
    }

    fn forget_idle_locks(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

/// A container id as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn str_field<'a>(v: &'a Value, field: &'static str, container: &str) -> Result<&'a str, AttachError> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| AttachError::Inspect {
            container: container.to_owned(),
            field,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(allocation_id("abc"), "docker:abc");
        assert_eq!(iface_label(0), "ethwe");
        assert_eq!(iface_label(2), "ethwe:2");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
