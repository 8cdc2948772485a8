//! The spec's success result, one model for every version, written in the
//! format the request's `cniVersion` asks for and read from any of them.
//!
//! The formats differ little: 0.3.x and 0.4.0 give each IP a `"version"`
//! (`"4"` or `"6"`), which 1.0.0 dropped; 1.1.0 adds an interface `mtu`.
//! Older readers ignore what they do not know, but each version gets only
//! its own fields.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{Dns, parse_version};
use crate::error::{CniError, code};

/// A result, independent of the spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    /// Interfaces created (host side first, then the container side).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses given.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes set in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Option<Dns>,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its MAC address, `aa:bb:..`.
    #[serde(default)]
    pub mac: Option<String>,
    /// The netns path if it is inside the container; absent on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Its MTU (written for 1.1.0 only).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// The address in CIDR form (`10.32.0.5/32`).
    pub address: String,
    /// The gateway, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The index into `interfaces` of the interface that has it.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// One route of a result (and of `ipam.routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination in CIDR form.
    pub dst: String,
    /// The next hop; absent for the default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

impl CniResult {
    /// Reads a result (a `prevResult`) of any supported version.
    ///
    /// # Errors
    /// Code 6 if it is not a result.
    pub fn from_value(v: &Value) -> Result<Self, CniError> {
        Self::deserialize(v)
            .map_err(|e| CniError::new(code::DECODING_FAILURE, "cannot decode prevResult").details(e.to_string()))
    }

    /// Appends `other` to this result (a chained ADD), renumbering its interface indices.
    pub fn extend(&mut self, other: Self) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|ip| IpConfig {
            interface: ip.interface.map(|i| i + offset),
            ..ip
        }));
        self.routes.extend(other.routes);
        if other.dns.as_ref().is_some_and(|d| !d.is_empty()) {
            self.dns = other.dns;
        }
    }

    /// The result in `cni_version`'s format.
    pub fn to_value(&self, cni_version: &str) -> Value {
        let v = parse_version(cni_version).unwrap_or((1, 0, 0));
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(cni_version));
        if !self.interfaces.is_empty() {
            let ifaces = self.interfaces.iter().map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    m.insert("mac".into(), json!(mac));
                }
                if let Some(mtu) = i.mtu.filter(|_| v >= (1, 1, 0)) {
                    m.insert("mtu".into(), json!(mtu));
                }
                if let Some(sandbox) = &i.sandbox {
                    m.insert("sandbox".into(), json!(sandbox));
                }
                Value::Object(m)
            });
            out.insert("interfaces".into(), Value::Array(ifaces.collect()));
        }
        if !self.ips.is_empty() {
            let ips = self.ips.iter().map(|ip| {
                let mut m = Map::new();
                if v < (1, 0, 0) {
                    let family = ip_of(&ip.address).map_or("4", |a| if a.is_ipv6() { "6" } else { "4" });
                    m.insert("version".into(), json!(family));
                }
                m.insert("address".into(), json!(ip.address));
                if let Some(gw) = &ip.gateway {
                    m.insert("gateway".into(), json!(gw));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            });
            out.insert("ips".into(), Value::Array(ips.collect()));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), json!(self.routes));
        }
        let dns = self.dns.clone().unwrap_or_default();
        out.insert("dns".into(), json!(dns));
        Value::Object(out)
    }
}

/// The address part of a CIDR (`10.32.0.5/32` -> `10.32.0.5`).
pub fn ip_of(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SUPPORTED_VERSIONS;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    sandbox: None,
                    mtu: Some(1376),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1376),
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
            dns: Some(Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Dns::default()
            }),
        }
    }

    #[test]
    fn each_version_gets_its_own_format_and_reads_back() {
        for v in SUPPORTED_VERSIONS {
            let out = sample().to_value(v);
            assert_eq!(out["cniVersion"], v);
            let ip = &out["ips"][0];
            if parse_version(v).unwrap() < (1, 0, 0) {
                assert_eq!(ip["version"], "4", "{v} results have ips[].version");
            } else {
                assert!(ip.get("version").is_none(), "{v} results have no ips[].version");
            }
            assert_eq!(ip["interface"], 1);
            assert_eq!(ip["gateway"], "169.254.1.1");
            assert_eq!(out["interfaces"][1]["sandbox"], "/run/netns/p");
            assert_eq!(out["interfaces"][0].get("mtu").is_some(), v == "1.1.0", "{v}");
            assert_eq!(out["routes"][0]["dst"], "0.0.0.0/0");
            assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10");
            let back = CniResult::from_value(&out).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
            assert_eq!(back.routes, sample().routes);
            assert_eq!(back.interfaces[1].name, "eth0");
        }
    }

    #[test]
    fn reads_results_of_other_plugins() {
        // host-local + bridge, 0.4.0, with fields this model does not keep.
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0", "mac": "0a:58:0a:f4:00:01"}],
            "ips": [{"version": "4", "address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::from_value(&prev).unwrap();
        assert_eq!(r.ips[0].address, "10.244.0.5/24");
        assert_eq!(r.routes[0].gw, None);
        assert!(CniResult::from_value(&json!({"ips": "nope"})).is_err());
    }

    #[test]
    fn chaining_renumbers_interfaces() {
        let mut prev = CniResult {
            interfaces: vec![Interface {
                name: "x".into(),
                ..Interface::default()
            }],
            ..CniResult::default()
        };
        prev.extend(sample());
        assert_eq!(prev.interfaces.len(), 3);
        assert_eq!(prev.ips[0].interface, Some(2));
    }

    #[test]
    fn an_empty_result_still_has_dns() {
        let v = CniResult::default().to_value("1.0.0");
        assert_eq!(v, json!({"cniVersion": "1.0.0", "dns": {}}));
    }
}
