//! End-to-end test harness for Weft: hosts and pods as Linux network namespaces.
//!
//! A [`Testbed`] is `n` hosts, each a network namespace with an underlay address `10.99.0.i/24`, joined by a
//! bridge that sits in a namespace of its own, so a test adds nothing to the root namespace. Hosts run real
//! `weft` routers through [`Host::spawn`]; [`Host::add_pod`] plugs a pod into a host as a routed CNI plugin
//! would; [`Testbed::cut`] and [`Testbed::restore`] unplug and replug a host for partition tests. Dropping the
//! testbed stops its processes and deletes its namespaces, also when the test panics.
//!
//! Everything is done by running `ip` (iproute2), so the harness needs root and no unsafe code. Tests start
//! with [`testbed_or_skip!`]: where namespaces are unavailable it prints `skipping: <reason>` and returns, and
//! under CI (`CI` set), where they must be available, it fails the test with the reason instead.
//!
//! Tests never sleep to wait for a state: they poll it with [`wait_until`].
//!
//! Unit tests that need a namespace or two and no testbed (veths, routes) make a [`TestNetns`] after
//! [`root_or_skip`].
//!
//! A testbed can have more underlay networks ([`Testbed::add_network`]: `10.98.0.i/24` on `eth1`, say), and two
//! hosts can be parted on one of them by a firewall of the harness's own ([`Testbed::sever`], [`Host::drop_from`]).
//!
//! [`router`] launches the real `weft` binary in a host (with [`router::Launch`] as users do: `weft launch
//! [PEER...]`) and reads its status; [`pcap`] reads what `tcpdump -w` captured on the underlay. [`runtime`] has
//! what tests of container runtimes share (daemons in a host's namespace, busybox images, cleanup of mounts and
//! cgroups). [`traffic`] sends and echoes pod traffic, with busybox `ping` and this crate's `weft-probe` binary.
//!
//! ```no_run
//! use std::time::Duration;
//! use weft_tests::{InNamespace as _, testbed_or_skip, wait_until};
//!
//! # fn main() {}
//! #[test]
//! fn a_partition_is_noticed() {
//!     let testbed = testbed_or_skip!(2);
//!     let (one, two) = (testbed.host(1), testbed.host(2));
//!     let _router = one.spawn(one.cmd("weft").args(["--listen", "10.99.0.1:4000"])).unwrap();
//!     let ping = || one.exec_ok(["busybox", "ping", "-c1", "-W1", &two.underlay_ip().to_string()]).is_ok();
//!     testbed.cut(2).unwrap();
//!     wait_until(Duration::from_secs(10), "host 2 to become unreachable", || !ping()).unwrap();
//! } // stops the router (SIGTERM, then SIGKILL after 2 s), then deletes the namespaces
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod netns;
pub mod pcap;
mod process;
pub mod router;
pub mod runtime;
mod skip;
mod test_netns;
mod testbed;
pub mod traffic;
mod wait;

pub use error::Error;
pub use netns::{InNamespace, Netns, netns_names, sweep};
pub use process::Process;
pub use skip::{missing_program, netns_unavailable, root_or_skip, skip_or_fail};
pub use test_netns::TestNetns;
pub use testbed::{Host, MAX_HOSTS, Network, POD_GATEWAY, Pod, Testbed, UNDERLAY, UNDERLAY_DEV};
pub use wait::wait_until;
