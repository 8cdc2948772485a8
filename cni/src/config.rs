//! What a runtime hands a plugin: the `CNI_*` environment and the network
//! configuration on stdin, parsed once into types the commands trust.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, code};

/// The spec versions both plugins speak, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: what VERSION and errors before parsing report.
pub const LATEST_VERSION: &str = "1.1.0";

/// Where the router's API socket is unless the configuration says `apiSocket`.
pub const DEFAULT_API_SOCKET: &str = weft_api::DEFAULT_SOCKET;

/// Where both plugins log unless the configuration says `logFile`.
pub const DEFAULT_LOG_FILE: &str = "/var/log/weft/cni.log";

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify a container's attachment.
    Check,
    /// Report the supported versions.
    Version,
    /// Whether the plugin can serve ADD (spec 1.1).
    Status,
    /// Release what no valid attachment uses (spec 1.1).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    ///
    /// # Errors
    /// Code 4 for an unknown command.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
                ));
            }
        })
    }

    /// The spec's name of the command.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The `CNI_*` variables of one invocation. Empty values count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
}

impl Env {
    /// Reads the variables through `get` (`std::env::var` in the binaries).
    ///
    /// # Errors
    /// Code 4 if `CNI_COMMAND` is missing or unknown, or a variable the
    /// command needs is missing (the message names every one).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))
            .and_then(|c| Command::parse(&c))?;
        let env = Self {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        };
        let needed: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            // containerd's second DEL has no netns: the sandbox is gone.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        let missing: Vec<&str> = needed.iter().copied().filter(|n| var(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("{} needs {} (not set or empty)", command.as_str(), missing.join(", ")),
            ));
        }
        // DEL checks nothing more: a name that could never have been attached has nothing to remove.
        if let Some(ifname) = env.ifname.as_ref().filter(|_| command != Command::Del)
            && (ifname.len() > MAX_IFNAME_LEN || ifname.contains(['/', ':']) || ifname.chars().any(char::is_whitespace))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name (at most 15 bytes, no '/', ':' or spaces)"
                ),
            ));
        }
        Ok(env)
    }

    /// `CNI_CONTAINERID`, which [`Env::from_lookup`] required where it is needed.
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// `CNI_IFNAME`, which [`Env::from_lookup`] required where it is needed.
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// The network configuration on stdin (one plugin's entry of a conflist, with
/// `name`, `cniVersion`, and `prevResult` and `runtimeConfig` filled in by the
/// runtime). Unknown keys are allowed: conflists carry other plugins' keys.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The spec version of this request and of the result it wants.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name; part of every allocation id.
    pub name: String,
    /// The plugin's type (binary name).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The router's API socket (`weft-net`; `weft-ipam` also reads `ipam.apiSocket`).
    #[serde(rename = "apiSocket", default)]
    pub api_socket: Option<PathBuf>,
    /// Where to log (`weft-net`; `weft-ipam` also reads `ipam.logFile`).
    #[serde(rename = "logFile", default)]
    pub log_file: Option<PathBuf>,
    /// The pod MTU when the router runs no data plane.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// DNS settings, returned in the result as they are.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The IPAM section (`weft-ipam`).
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// The result of the plugins before this one (chains), or this plugin's own result (DEL, CHECK).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Capabilities the runtime fills in.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// GC (spec 1.1): the attachments that are still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses and validates stdin.
    ///
    /// # Errors
    /// Code 6 if it is not JSON or a field has the wrong type; 7 if `name`
    /// is not a valid network name; 1 if `cniVersion` is not supported.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODING_FAILURE, "cannot decode the network configuration").details(e.to_string())
        })?;
        check_version(&conf.cni_version)?;
        if !valid_network_name(&conf.name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network name {:?} is invalid: it must start with a letter or digit, followed by letters, \
                     digits, '_', '.' or '-'",
                    conf.name
                ),
            ));
        }
        if conf.mtu.is_some_and(|m| !(MIN_MTU..=MAX_MTU).contains(&m)) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("\"mtu\" must be between {MIN_MTU} and {MAX_MTU}"),
            ));
        }
        Ok(conf)
    }

    /// The cniVersion as a comparable triple.
    pub fn version(&self) -> (u32, u32, u32) {
        parse_version(&self.cni_version).unwrap_or_default()
    }

    /// Fails with code 1 unless the request is at least version `min` (for a command that version introduced).
    ///
    /// # Errors
    /// Code 1.
    pub fn require_version(&self, min: (u32, u32, u32), command: Command) -> Result<(), CniError> {
        if self.version() < min {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs cniVersion {}.{}.{} or later; this request is {}",
                    command.as_str(),
                    min.0,
                    min.1,
                    min.2,
                    self.cni_version
                ),
            ));
        }
        Ok(())
    }
}

/// Fails unless `v` is one of [`SUPPORTED_VERSIONS`].
///
/// # Errors
/// Code 1.
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!(
            "cniVersion {v:?} is not supported; supported: {}",
            SUPPORTED_VERSIONS.join(", ")
        ),
    ))
}

/// `"1.0.0"` as `(1, 0, 0)`.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

/// The spec's network name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. It also keeps
/// `:` out of allocation ids, so GC's prefix `cni:<name>:` cannot match another network.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The `ipam` section, as `weft-ipam` reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamConf {
    /// The IPAM plugin's type.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The router's API socket.
    #[serde(rename = "apiSocket", default)]
    pub api_socket: Option<PathBuf>,
    /// Where to log.
    #[serde(rename = "logFile", default)]
    pub log_file: Option<PathBuf>,
    /// Routes to return with the address.
    #[serde(default)]
    pub routes: Vec<crate::result::Route>,
    /// The gateway to return; default: the router's own address on the pod network.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// DNS settings (the spec's `dns` dictionary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set (the result then has no `dns`).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

/// `runtimeConfig`: the capabilities weft-net declares or passes along.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// Port mappings, in podman's and containerd's spellings; `portmap` acts on them.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    /// Anything else the runtime sends.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One port mapping. Podman sends `hostPort`, containerd `HostPort`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    /// The port on the host.
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    /// The port in the container.
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default, alias = "Protocol")]
    pub protocol: Option<String>,
    /// The host address to bind, if not all.
    #[serde(rename = "hostIP", alias = "HostIP", default)]
    pub host_ip: Option<String>,
}

/// One of GC's valid attachments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface in the container.
    pub ifname: String,
}

/// The longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 65535;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Env::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn every_supported_version_parses() {
        for v in SUPPORTED_VERSIONS {
            let conf = NetConf::parse(format!(r#"{{"cniVersion":"{v}","name":"weft","type":"weft-net"}}"#).as_bytes())
                .unwrap();
            assert_eq!(conf.cni_version, v);
            assert_eq!(parse_version(v), Some(conf.version()));
        }
        for bad in ["0.2.0", "0.1.0", "1.2.0", "", "1.0"] {
            let e = NetConf::parse(format!(r#"{{"cniVersion":"{bad}","name":"weft"}}"#).as_bytes()).unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{bad}");
        }
    }

    #[test]
    fn full_config_with_runtime_config_in_both_spellings() {
        let conf = NetConf::parse(
            br#"{
                "cniVersion": "1.0.0", "name": "pods-1", "type": "weft-net",
                "apiSocket": "/tmp/w.sock", "logFile": "/tmp/w.log", "mtu": 1400,
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.local"]},
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"},
                    {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": ""}
                ], "bandwidth": {"ingressRate": 1000}},
                "prevResult": {"cniVersion": "1.0.0", "ips": []}
            }"#,
        )
        .unwrap();
        assert_eq!(conf.api_socket, Some(PathBuf::from("/tmp/w.sock")));
        assert_eq!(conf.log_file, Some(PathBuf::from("/tmp/w.log")));
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.dns.as_ref().unwrap().nameservers, ["10.96.0.10"]);
        let pm = &conf.runtime_config.port_mappings;
        assert_eq!(pm.len(), 2);
        assert_eq!(
            pm[0],
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Some("tcp".into()),
                host_ip: Some("0.0.0.0".into())
            }
        );
        assert_eq!((pm[1].host_port, pm[1].container_port), (5353, 53));
        assert_eq!(pm[1].protocol.as_deref(), Some("udp"));
        assert!(conf.runtime_config.other.contains_key("bandwidth"));
        assert!(conf.prev_result.is_some());
    }

    #[test]
    fn bad_configs_get_their_codes() {
        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE, "a missing name is a decoding failure");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a:b"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a","mtu":10}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a","mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
    }

    #[test]
    fn gc_attachments_and_ipam_section() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"weft-ipam","apiSocket":"/s","gateway":"10.32.0.1",
                 "routes":[{"dst":"0.0.0.0/0"}]},
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let ipam = conf.ipam.unwrap();
        assert_eq!(ipam.api_socket, Some(PathBuf::from("/s")));
        assert_eq!(ipam.routes.len(), 1);
        assert_eq!(ipam.gateway, Some("10.32.0.1".parse().unwrap()));
        assert_eq!(
            conf.valid_attachments.unwrap(),
            [Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn environment_per_command() {
        let add = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(add.command, Command::Add);
        assert_eq!(add.container_id(), "abc");
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_CONTAINERID") && e.msg.contains("CNI_NETNS"),
            "{}",
            e.msg
        );
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ]);
        assert_eq!(del.unwrap().netns, None, "containerd's second DEL has an empty netns");
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        assert_eq!(env(&[]).unwrap_err().code, code::INVALID_ENV);
        assert_eq!(env(&[("CNI_COMMAND", "UP")]).unwrap_err().code, code::INVALID_ENV);
        let long_del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ]);
        assert!(long_del.is_ok(), "DEL of what could never be attached succeeds");
        let long = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ]);
        assert!(long.unwrap_err().msg.contains("CNI_IFNAME"));
    }

    #[test]
    fn network_names() {
        for ok in ["weft", "k8s-pod-network", "a.b_c", "0"] {
            assert!(valid_network_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a:b", "a b", "é"] {
            assert!(!valid_network_name(bad), "{bad}");
        }
    }
}
