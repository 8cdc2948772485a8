//! The commands of both plugins: read the request, act, answer on stdout.

use std::collections::BTreeSet;
use std::io::{self, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_api::ClientError;
use weft_api::blocking::Client;
use weft_api::types::Status;

use crate::api::{allocate_request, cni_error, release_request};
use crate::config::{
    Command, DEFAULT_API_SOCKET, DEFAULT_LOG_FILE, Env, LATEST_VERSION, NetConf, SUPPORTED_VERSIONS, check_version,
};
use crate::error::{CniError, code};
use crate::link::{self, POD_GATEWAY};
use crate::log::Log;
use crate::result::{CniResult, Interface, IpConfig, Route, ip_of};

/// Which of the two plugins is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `weft-net`: veth, address, routes.
    Net,
    /// `weft-ipam`: the address alone, for another main plugin.
    Ipam,
}

impl Plugin {
    fn name(self) -> &'static str {
        match self {
            Self::Net => "weft-net",
            Self::Ipam => "weft-ipam",
        }
    }

    fn api_socket(self, conf: &NetConf) -> PathBuf {
        let own = match self {
            Self::Net => None,
            Self::Ipam => conf.ipam.as_ref().and_then(|i| i.api_socket.clone()),
        };
        own.or_else(|| conf.api_socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET))
    }

    fn log_file(self, conf: &NetConf) -> PathBuf {
        let own = match self {
            Self::Net => None,
            Self::Ipam => conf.ipam.as_ref().and_then(|i| i.log_file.clone()),
        };
        own.or_else(|| conf.log_file.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_FILE))
    }
}

/// Runs one plugin invocation from the process's environment and stdin.
pub fn main(plugin: Plugin) -> ExitCode {
    let deadline = Instant::now() + ROUTER_DEADLINE;
    let mut stdin = Vec::new();
    let read = io::stdin().take(MAX_STDIN_BYTES).read_to_end(&mut stdin);
    let env = Env::from_lookup(|name| std::env::var(name).ok());
    let mut version = requested_version(&stdin);
    let outcome = read
        .map_err(|e| {
            CniError::new(code::IO_FAILURE, "cannot read the network configuration from stdin").details(e.to_string())
        })
        .and(env)
        .and_then(|env| {
            if env.command == Command::Version {
                return Ok(Some(version_reply()));
            }
            let conf = NetConf::parse(&stdin)?;
            version.clone_from(&conf.cni_version);
            let mut log = Log::open(
                &plugin.log_file(&conf),
                format!(
                    "{}[{}] {} container={} ifname={}",
                    plugin.name(),
                    std::process::id(),
                    env.command.as_str(),
                    env.container_id.as_deref().unwrap_or("-"),
                    env.ifname.as_deref().unwrap_or("-"),
                ),
            );
            log.line(&format!(
                "network={} netns={} cniVersion={}",
                conf.name,
                env.netns.as_deref().unwrap_or("-"),
                conf.cni_version
            ));
            let started = Instant::now();
            let client = Client::new(plugin.api_socket(&conf), deadline);
            let outcome = Request {
                env: &env,
                conf: &conf,
                client: &client,
                log: &mut log,
            }
            .run(plugin);
            match &outcome {
                Ok(_) => log.line(&format!("ok in {} ms", started.elapsed().as_millis())),
                Err(e) => log.line(&format!("failed in {} ms: {e}", started.elapsed().as_millis())),
            }
            outcome
        });
    let mut out = io::stdout().lock();
    match outcome {
        Ok(reply) => {
            if let Some(reply) = reply {
                let _ = writeln!(out, "{reply}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// The reply to VERSION.
pub fn version_reply() -> Value {
    json!({"cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The allocation id of a container on a network: `cni:<network>:<container id>`.
/// The prefix keeps every network's allocations apart from the others' and
/// from the router's own, so GC never releases what is not its network's.
///
/// # Errors
/// Code 4 if the id is longer than the router takes.
pub fn allocation_id(network: &str, container_id: &str) -> Result<String, CniError> {
    let id = format!("{ID_PREFIX}{network}:{container_id}");
    if id.len() > MAX_ID_LEN {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID is too long: the allocation id {ID_PREFIX}<network>:<CNI_CONTAINERID> is {} bytes \
                 with network {network:?}; the router takes at most {MAX_ID_LEN}",
                id.len()
            ),
        ));
    }
    Ok(id)
}

/// The cniVersion of the request if stdin has a supported one, for errors
/// before (or instead of) a full parse.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| check_version(v).is_ok())
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

struct Request<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    client: &'a Client,
    log: &'a mut Log,
}

impl Request<'_> {
    fn run(self, plugin: Plugin) -> Result<Option<Value>, CniError> {
        match (self.env.command, plugin) {
            (Command::Version, _) => Ok(Some(version_reply())),
            (Command::Add, Plugin::Net) => self.net_add().map(Some),
            (Command::Add, Plugin::Ipam) => self.ipam_add().map(Some),
            (Command::Del, _) => self.del(plugin).map(|()| None),
            (Command::Check, _) => self.check(plugin).map(|()| None),
            (Command::Status, _) => self.status().map(|()| None),
            (Command::Gc, _) => self.gc(plugin).map(|()| None),
        }
    }

    /// ADD of weft-net: an address, the veth, routes; rolled back on failure.
    fn net_add(self) -> Result<Value, CniError> {
        let (cid, ifname) = (self.env.container_id(), self.env.ifname());
        let id = allocation_id(&self.conf.name, cid)?;
        let netns = Path::new(self.env.netns.as_deref().unwrap_or_default());
        // Everything that can be refused is checked before allocating, so a
        // bad request leaves nothing behind.
        drop(link::open_netns(netns)?);
        let prev = self.conf.prev_result.as_ref().map(CniResult::from_value).transpose()?;
        let status = self.ready_status()?;
        let router_mtu = status.dataplane.map(|d| u32::from(d.mtu));
        let mtu = router_mtu.or(self.conf.mtu).unwrap_or(DEFAULT_MTU);
        let alloc = self
            .client
            .allocate(&allocate_request(&id, ifname))
            .map_err(|e| cni_error(e, "cannot allocate an address"))?;
        self.log.line(&format!(
            "allocated {} for {id}{}",
            alloc.address,
            if alloc.existing { " (existing)" } else { "" }
        ));
        let host_veth = link::host_veth_name(cid, ifname);
        let attached = parse_v4(&alloc.address).and_then(|addr| {
            let made = link::attach(&link::spec(netns, ifname, &host_veth, addr, mtu))?;
            link::enable_ip_forward()?;
            Ok((addr, made))
        });
        let (addr, made) = match attached {
            Ok(done) => done,
            Err(e) => {
                let _ = link::detach(&host_veth);
                // A repeated ADD found the address already allocated: it may be in use, keep it.
                if !alloc.existing {
                    match self.client.release(&release_request(&id, ifname)) {
                        Ok(_) => self.log.line(&format!("rolled back: released {}", alloc.address)),
                        Err(re) => self
                            .log
                            .line(&format!("rollback could not release {}: {re}", alloc.address)),
                    }
                }
                return Err(e);
            }
        };
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: host_veth,
                    mac: Some(made.host_mac.to_string()),
                    sandbox: None,
                    mtu: Some(mtu),
                },
                Interface {
                    name: ifname.to_owned(),
                    mac: Some(made.pod_mac.to_string()),
                    sandbox: Some(netns.display().to_string()),
                    mtu: Some(mtu),
                },
            ],
            ips: vec![IpConfig {
                address: format!("{addr}/32"),
                gateway: Some(POD_GATEWAY.to_string()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(POD_GATEWAY.to_string()),
            }],
            dns: self.conf.dns.clone(),
        };
        let all = match prev {
            Some(mut prev) => {
                prev.extend(ours);
                prev
            }
            None => ours,
        };
        Ok(all.to_value(&self.conf.cni_version))
    }

    /// ADD of weft-ipam: the address, the gateway and the configured routes.
    fn ipam_add(self) -> Result<Value, CniError> {
        let id = allocation_id(&self.conf.name, self.env.container_id())?;
        let status = self.ready_status()?;
        let ipam = self.conf.ipam.clone().unwrap_or_default();
        let gateway = ipam.gateway.or_else(|| {
            let host = status.host_address.as_deref().and_then(ip_of)?;
            match host {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            }
        });
        let alloc = self
            .client
            .allocate(&allocate_request(&id, self.env.ifname()))
            .map_err(|e| cni_error(e, "cannot allocate an address"))?;
        self.log.line(&format!("allocated {} for {id}", alloc.address));
        if let Err(e) = parse_v4(&alloc.address) {
            if !alloc.existing {
                let _ = self.client.release(&release_request(&id, self.env.ifname()));
            }
            return Err(e);
        }
        let ours = CniResult {
            interfaces: Vec::new(),
            ips: vec![IpConfig {
                address: alloc.address,
                gateway: gateway.map(|g| g.to_string()),
                interface: None,
            }],
            routes: ipam.routes,
            dns: self.conf.dns.clone(),
        };
        Ok(ours.to_value(&self.conf.cni_version))
    }

    /// DEL: remove the interfaces (weft-net), then release the address.
    ///
    /// Both steps are idempotent, and neither needs the netns or prevResult:
    /// the host veth's name and the allocation id follow from the container
    /// id and interface. When the router cannot be reached, the interfaces
    /// are still removed and DEL fails with code 11, saying so: the address
    /// is kept rather than leaked silently, runtimes retry a failed DEL
    /// (kubelet and containerd do, on every sync), and the retry succeeds as
    /// soon as the router is back (a restart takes seconds). An address
    /// whose DEL never succeeds is released by GC (spec 1.1 runtimes).
    fn del(self, plugin: Plugin) -> Result<(), CniError> {
        let (cid, ifname) = (self.env.container_id(), self.env.ifname());
        let removed = match plugin {
            Plugin::Net => {
                let host_veth = link::host_veth_name(cid, ifname);
                let removed = link::detach(&host_veth);
                match &removed {
                    Ok(true) => self.log.line(&format!("deleted {host_veth}")),
                    Ok(false) => self.log.line(&format!("{host_veth} was already gone")),
                    Err(e) => self.log.line(&format!("cannot delete {host_veth}: {e}")),
                }
                removed.map(|_| ())
            }
            Plugin::Ipam => Ok(()),
        };
        // An id the router could never have taken has nothing to release.
        let Ok(id) = allocation_id(&self.conf.name, cid) else {
            return removed;
        };
        match self.client.release(&release_request(&id, ifname)) {
            Ok(released) => {
                self.log.line(&format!(
                    "released {}",
                    released.address.as_deref().unwrap_or("nothing")
                ));
                removed
            }
            Err(ClientError::Api { status: 400, error }) => {
                self.log
                    .line(&format!("nothing to release: the router refuses the key: {error}"));
                removed
            }
            Err(e) => {
                let done = match (plugin, &removed) {
                    (Plugin::Ipam, _) => "",
                    (Plugin::Net, Ok(())) => "the interfaces were removed, but ",
                    (Plugin::Net, Err(_)) => "the interfaces could not be removed, and ",
                };
                let mut err = cni_error(e, &format!("{done}the address of {id} was not released; retry DEL"));
                if let Err(link_err) = removed {
                    err = err.details(link_err.to_string());
                }
                Err(err)
            }
        }
    }

    /// CHECK: the interface, address and routes against prevResult, and the router still holds the address.
    fn check(self, plugin: Plugin) -> Result<(), CniError> {
        self.conf.require_version((0, 4, 0), Command::Check)?;
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
        let prev = CniResult::from_value(prev)?;
        let ifname = self.env.ifname();
        let mismatch = |what: String| CniError::new(code::CHECK_MISMATCH, what);
        let ip = match plugin {
            Plugin::Net => {
                let index = prev
                    .interfaces
                    .iter()
                    .position(|i| i.name == ifname && i.sandbox.is_some())
                    .ok_or_else(|| mismatch(format!("prevResult has no interface {ifname} in a sandbox")))?;
                prev.ips.iter().find(|ip| ip.interface == Some(index))
            }
            Plugin::Ipam => prev.ips.first(),
        }
        .ok_or_else(|| mismatch(format!("prevResult has no address for {ifname}")))?;
        let addr = parse_v4(&ip.address)?;
        let id = allocation_id(&self.conf.name, self.env.container_id())?;
        let held = self
            .client
            .allocations()
            .map_err(|e| cni_error(e, "cannot list the router's allocations"))?
            .into_iter()
            .find(|a| a.id == id && a.iface == ifname);
        match held {
            Some(a) if ip_of(&a.address) == Some(addr.into()) => {}
            Some(a) => {
                return Err(mismatch(format!(
                    "the router gave {id} {} but prevResult says {addr}",
                    a.address
                )));
            }
            None => return Err(mismatch(format!("the router holds no address for {id} on {ifname}"))),
        }
        if plugin == Plugin::Net {
            let netns = Path::new(self.env.netns.as_deref().unwrap_or_default());
            let host_veth = link::host_veth_name(self.env.container_id(), ifname);
            // The MTU is not compared.
            link::check(&link::spec(netns, ifname, &host_veth, addr, 0))?;
        }
        Ok(())
    }

    /// STATUS (1.1): ready when the router answers and has its address ring.
    fn status(self) -> Result<(), CniError> {
        self.conf.require_version((1, 1, 0), Command::Status)?;
        let status = self
            .client
            .status()
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, format!("cannot allocate: {e}")))?;
        if let Some(problem) = status.ipam.problem {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("the weft router cannot allocate yet: {problem}"),
            ));
        }
        Ok(())
    }

    /// GC (1.1): release this network's allocations that no valid attachment uses.
    fn gc(self, plugin: Plugin) -> Result<(), CniError> {
        self.conf.require_version((1, 1, 0), Command::Gc)?;
        let valid: BTreeSet<(&str, &str)> = self
            .conf
            .valid_attachments
            .as_ref()
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let prefix = format!("{ID_PREFIX}{}:", self.conf.name);
        let all = self
            .client
            .allocations()
            .map_err(|e| cni_error(e, "cannot list the router's allocations"))?;
        let mut failed = Vec::new();
        for a in &all {
            let Some(cid) = a.id.strip_prefix(&prefix) else {
                continue;
            };
            if valid.contains(&(cid, a.iface.as_str())) {
                continue;
            }
            if plugin == Plugin::Net {
                let _ = link::detach(&link::host_veth_name(cid, &a.iface));
            }
            match self.client.release(&release_request(&a.id, &a.iface)) {
                Ok(_) => self
                    .log
                    .line(&format!("gc released {} of {} on {}", a.address, a.id, a.iface)),
                Err(e) => {
                    self.log.line(&format!("gc could not release {}: {e}", a.id));
                    failed.push(e);
                }
            }
        }
        match failed.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(cni_error(e, "GC could not release every stale address")),
        }
    }

    /// The router's status, if it can allocate now; code 11 if not.
    fn ready_status(&self) -> Result<Status, CniError> {
        let status = self
            .client
            .status()
            .map_err(|e| cni_error(e, "cannot reach the weft router"))?;
        if let Some(problem) = &status.ipam.problem {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("the weft router cannot allocate yet: {problem}"),
            ));
        }
        Ok(status)
    }
}

fn parse_v4(cidr: &str) -> Result<Ipv4Addr, CniError> {
    match ip_of(cidr) {
        Some(std::net::IpAddr::V4(v4)) => Ok(v4),
        _ => Err(CniError::new(
            code::DECODING_FAILURE,
            format!("the router's address {cidr:?} is not an IPv4 CIDR"),
        )),
    }
}

/// Every allocation id a plugin makes starts with this.
pub const ID_PREFIX: &str = "cni:";

/// The router's longest allocation id.
pub const MAX_ID_LEN: usize = 256;

/// The pod MTU when the router runs no data plane and the config has no `mtu`:
/// what the tunnel leaves of a 1500-byte underlay, with room for IPv6.
pub const DEFAULT_MTU: u32 = 1420;

/// Everything asked of the router in one invocation ends within this, so a
/// router that does not answer fails ADD with code 11 well inside 10 s.
pub const ROUTER_DEADLINE: Duration = Duration::from_secs(8);

/// Larger stdin is cut (and then fails to decode).
const MAX_STDIN_BYTES: u64 = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_ids() {
        assert_eq!(allocation_id("weft", "abc").unwrap(), "cni:weft:abc");
        let long = "a".repeat(250);
        let e = allocation_id("weft", &long).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(allocation_id("w", &"a".repeat(MAX_ID_LEN - 6)).is_ok());
    }

    #[test]
    fn version_reply_lists_the_five_versions() {
        let v = version_reply();
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn errors_before_parsing_use_the_requested_version_when_known() {
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0","name":1}"#), "0.4.0");
        assert_eq!(requested_version(br#"{"cniVersion":"9.9.9"}"#), LATEST_VERSION);
        assert_eq!(requested_version(b"{oops"), LATEST_VERSION);
    }
}
