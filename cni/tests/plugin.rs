//! `weft-net` and `weft-ipam` as a runtime runs them: the built binaries,
//! the `CNI_*` environment and a config on stdin, in a host namespace with a
//! real `weft launch`, against pod namespaces this test makes.
//!
//! Needs root (network namespaces), iproute2, and the router binary
//! (`cargo build -p weft-router --bin weft`). Without root or namespaces the
//! tests print why and pass, except under CI, where they fail
//! (`weft_tests::skip_or_fail`). Cleanup (routers, namespaces) happens in
//! `Drop`, also when a test panics.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use weft_api::blocking::Client as RouterClient;
use weft_cni::api::allocate_request;
use weft_cni::link::host_veth_name;
use weft_tests::router::{Router, wait_for, workdir, write_secret};
use weft_tests::{InNamespace as _, Testbed, require_program};

const RANGE: &str = "10.44.0.0/16";
const NETWORK: &str = "weftnet";

/// A host namespace with a router whose ring exists, and pod namespaces on demand.
struct Bed<'t> {
    // Field order is drop order: the pods, then the router, then its directory.
    pods: Vec<PodNs>,
    router: Router<'t>,
    dir: TempDir,
    tb: &'t Testbed,
}

impl<'t> Bed<'t> {
    fn start(tb: &'t Testbed) -> Self {
        let dir = workdir();
        let secret = write_secret(dir.path(), "secret", "cni plugin test secret");
        let extra = ["--ipalloc-range", RANGE, "--ipalloc-init", "seed=h1"];
        let router = Router::launch_with(tb.host(1), dir.path(), &secret, &[], &extra);
        let bed = Self {
            pods: Vec::new(),
            router,
            dir,
            tb,
        };
        bed.wait_ready();
        bed
    }

    fn wait_ready(&self) {
        wait_for(
            &[&self.router],
            Duration::from_secs(30),
            "the router's ring and host address",
            |s| s[0].host_address.is_some() && s[0].ipam.problem.is_none(),
        );
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("h1.sock")
    }

    fn client(&self) -> RouterClient {
        RouterClient::new(self.socket(), Instant::now() + Duration::from_secs(10))
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "weft-net",
            "apiSocket": self.socket(),
            "logFile": self.dir.path().join("log/cni.log"),
            "dns": {"nameservers": ["10.96.0.10"]},
        })
    }

    /// A new, empty pod namespace.
    fn pod(&mut self, suffix: &str) -> PathBuf {
        let name = format!("{}-p{suffix}", self.tb.prefix());
        run(Command::new("ip").args(["netns", "add", &name]));
        self.pods.push(PodNs(name.clone()));
        PathBuf::from("/run/netns").join(name)
    }

    /// Runs `bin` in the host namespace as the runtime would.
    fn plugin(&self, bin: &str, command: &str, container: &str, netns: &Path, stdin: &[u8]) -> Outcome {
        let mut cmd = self.tb.host(1).cmd(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("the plugin starts");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Outcome {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    }

    fn net(&self, command: &str, container: &str, netns: &Path, conf: &Value) -> Outcome {
        self.plugin(NET, command, container, netns, conf.to_string().as_bytes())
    }

    /// `ip -n HOST ARGS`.
    fn host_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", self.tb.host(1).netns().name()]).args(args);
        output(&mut cmd)
    }

    fn allocation_ids(&self) -> Vec<(String, String)> {
        let mut ids: Vec<(String, String)> = self
            .client()
            .allocations()
            .expect("the router lists its allocations")
            .into_iter()
            .map(|a| (a.id, a.address))
            .collect();
        ids.sort();
        ids
    }
}

struct PodNs(String);

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[derive(Debug)]
struct Outcome {
    ok: bool,
    json: Value,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Outcome {
    #[track_caller]
    fn success(self, what: &str) -> Value {
        assert!(self.ok, "{what} failed: {} {}", self.stdout, self.stderr);
        self.json
    }

    #[track_caller]
    fn failure(self, what: &str) -> Value {
        assert!(!self.ok, "{what} should have failed: {}", self.stdout);
        assert!(
            self.json["msg"].is_string(),
            "{what}: not a spec error: {}",
            self.stdout
        );
        self.json
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn run(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn in_pod(netns: &Path, args: &[&str]) -> String {
    let name = netns.file_name().unwrap().to_str().unwrap();
    run(Command::new("ip").args(["-n", name]).args(args))
}

const NET: &str = env!("CARGO_BIN_EXE_weft-net");
const IPAM: &str = env!("CARGO_BIN_EXE_weft-ipam");

/// ADD gives the pod its interface, /32, default route and MTU and the host its route; a repeated ADD gives
/// the same address; CHECK passes, and fails once a route is gone; DEL removes the veth and the allocation;
/// containerd's second DEL (no netns, no prevResult) succeeds.
#[test]
fn add_check_del_against_a_real_router() {
    require_program!("busybox");
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let netns = bed.pod("a");
    let conf = bed.conf("1.0.0");
    let cid = "c0ffee0000000000000000000000000000000000000000000000000000000001";

    let add = bed.net("ADD", cid, &netns, &conf);
    eprintln!("ADD took {:?}", add.took);
    let result = add.success("ADD");
    assert_eq!(result["cniVersion"], "1.0.0");
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.44.") && address.ends_with("/32"), "{result}");
    assert!(result["ips"][0].get("version").is_none(), "1.0.0 has no ips[].version");
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    let index = result["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(result["interfaces"][index]["name"], "eth0");
    assert_eq!(result["interfaces"][index]["sandbox"], netns.to_str().unwrap());
    let host_veth = host_veth_name(cid, "eth0");
    assert_eq!(result["interfaces"][0]["name"], host_veth);
    assert_eq!(result["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
    assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");

    let pod_addr = in_pod(&netns, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addr.contains(&format!("inet {address} ")), "{pod_addr}");
    let pod_routes = in_pod(&netns, &["-4", "route", "show"]);
    assert!(pod_routes.contains("default via 169.254.1.1 dev eth0"), "{pod_routes}");
    assert!(
        pod_routes
            .lines()
            .any(|l| l.starts_with("169.254.1.1 dev eth0 ") && l.contains("scope link")),
        "{pod_routes}"
    );
    let status = bed.router.status().unwrap();
    let mtu = in_pod(&netns, &["-o", "link", "show", "dev", "eth0"]);
    if let Some(dp) = &status.dataplane {
        assert!(
            mtu.contains(&format!(" mtu {} ", dp.mtu)),
            "pod MTU should be the router's {}: {mtu}",
            dp.mtu
        );
    }
    let ip = address.trim_end_matches("/32");
    let host_route = bed.host_ip(&["-4", "route", "show", ip]).unwrap();
    assert!(host_route.contains(&format!("dev {host_veth}")), "{host_route}");
    // The host reaches the pod through its /32 route, and the pod the host's pod-network address through the
    // link-local gateway (the permanent neighbour entry for 169.254.1.1).
    let host_address = status.host_address.unwrap().to_string();
    tb.host(1)
        .exec_ok(["busybox", "ping", "-c1", "-W2", ip])
        .expect("host -> pod");
    let pod_ns = netns.file_name().unwrap().to_str().unwrap();
    run(Command::new("ip").args(["netns", "exec", pod_ns, "busybox", "ping", "-c1", "-W2", &host_address]));
    let forward = tb.host(1).exec_ok(["cat", "/proc/sys/net/ipv4/ip_forward"]).unwrap();
    assert_eq!(forward.trim(), "1");
    let id = format!("cni:{NETWORK}:{cid}");
    let listed = bed.allocation_ids();
    assert!(
        listed.contains(&(id.clone(), address.replace("/32", "/16"))),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|(i, _)| !i.starts_with("weft:")),
        "the router's own host address is not listed: {listed:?}"
    );

    let again = bed.net("ADD", cid, &netns, &conf).success("repeated ADD");
    assert_eq!(
        again["ips"][0]["address"],
        address.as_str(),
        "a repeated ADD keeps the address"
    );

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = again;
    bed.net("CHECK", cid, &netns, &with_prev).success("CHECK");
    in_pod(&netns, &["route", "del", "default"]);
    let check = bed
        .net("CHECK", cid, &netns, &with_prev)
        .failure("CHECK without the default route");
    assert_eq!(check["code"], 102);
    assert!(check["msg"].as_str().unwrap().contains("default route"), "{check}");

    bed.net("DEL", cid, &netns, &with_prev).success("DEL");
    assert!(
        bed.host_ip(&["link", "show", &host_veth]).is_err(),
        "DEL leaves no host veth"
    );
    assert!(
        !in_pod(&netns, &["link"]).contains("eth0"),
        "DEL leaves no pod interface"
    );
    assert!(
        !bed.allocation_ids().iter().any(|(i, _)| *i == id),
        "DEL releases the address"
    );
    let second = bed.plugin(NET, "DEL", cid, Path::new(""), conf.to_string().as_bytes());
    second.success("the second DEL, without netns or prevResult");
    let log = std::fs::read_to_string(bed.dir.path().join("log/cni.log")).unwrap();
    assert!(
        log.contains(&format!("ADD container={cid}")) && log.contains(&format!("DEL container={cid}")),
        "{log}"
    );
}

/// Every spec version's ADD result has its own format; CHECK is refused before 0.4.0.
#[test]
fn results_follow_the_requested_version() {
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let netns = bed.pod(&i.to_string());
        let cid = format!("version-{i}");
        let result = bed.net("ADD", &cid, &netns, &bed.conf(version)).success(version);
        assert_eq!(result["cniVersion"], version);
        let old = version.starts_with("0.");
        assert_eq!(result["ips"][0].get("version").is_some(), old, "{version}: {result}");
        bed.net("DEL", &cid, &netns, &bed.conf(version)).success(version);
    }
    // Chained after another plugin: its result comes first, and ours points at our interfaces.
    let netns = bed.pod("chain");
    let mut chained = bed.conf("1.0.0");
    chained["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "earlier0"}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}],
    });
    let result = bed.net("ADD", "chained", &netns, &chained).success("chained ADD");
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 3, "{result}");
    assert_eq!(result["ips"][0]["address"], "192.0.2.9/24");
    assert_eq!(result["ips"][1]["interface"], 2);
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    bed.net("DEL", "chained", &netns, &chained).success("chained DEL");
}

/// Bad input gets the spec's codes and leaves nothing behind.
#[test]
fn bad_requests_get_spec_errors_and_leave_nothing() {
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let netns = bed.pod("a");
    let before = bed.allocation_ids();

    let bad = bed
        .plugin(NET, "ADD", "bad", &netns, b"{\"cniVersion\": \"1.0.0\", ")
        .failure("malformed stdin");
    assert_eq!(bad["code"], 6);
    let old = bed
        .net("ADD", "bad", &netns, &bed.conf("0.2.0"))
        .failure("cniVersion 0.2.0");
    assert_eq!(old["code"], 1);
    let missing = bed
        .net("ADD", "bad", Path::new(""), &bed.conf("1.0.0"))
        .failure("ADD without CNI_NETNS");
    assert_eq!(missing["code"], 4);
    assert!(missing["msg"].as_str().unwrap().contains("CNI_NETNS"), "{missing}");
    let gone = bed.net(
        "ADD",
        "bad",
        Path::new("/run/netns/weft-no-such-ns"),
        &bed.conf("1.0.0"),
    );
    let gone = gone.failure("ADD into a missing netns");
    assert_eq!(gone["code"], 4);
    let mut bad_prev = bed.conf("1.0.0");
    bad_prev["prevResult"] = json!({"ips": "not a list"});
    let prev = bed
        .net("ADD", "badprev", &netns, &bad_prev)
        .failure("a prevResult that is not a result");
    assert_eq!(prev["code"], 6);
    let long = "x".repeat(300);
    let too_long = bed
        .net("ADD", &long, &netns, &bed.conf("1.0.0"))
        .failure("a 300-byte container id");
    assert_eq!(too_long["code"], 4);

    // The pod already has an eth0: the veth cannot be made, and the address is rolled back.
    run(Command::new("ip").args([
        "-n",
        netns.file_name().unwrap().to_str().unwrap(),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "other0",
    ]));
    let taken = bed
        .net("ADD", "taken", &netns, &bed.conf("1.0.0"))
        .failure("ADD onto an existing eth0");
    assert_eq!(taken["code"], 5, "{taken}");
    assert_eq!(bed.allocation_ids(), before, "failed ADDs leave no allocation");
    assert!(
        bed.host_ip(&["link", "show", &host_veth_name("taken", "eth0")])
            .is_err()
    );
}

/// With its router stopped, ADD fails with code 11 within 10 s; DEL removes the interfaces, fails with 11,
/// and succeeds once the router is back, releasing the address.
#[test]
fn a_stopped_router_means_try_again_later() {
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let netns = bed.pod("a");
    let conf = bed.conf("1.0.0");
    bed.net("ADD", "kept", &netns, &conf).success("ADD");
    bed.router.kill();

    let other = bed.pod("b");
    let add = bed.net("ADD", "other", &other, &conf);
    assert!(add.took < Duration::from_secs(10), "ADD took {:?}", add.took);
    assert_eq!(add.failure("ADD with the router stopped")["code"], 11);

    let del = bed
        .net("DEL", "kept", &netns, &conf)
        .failure("DEL with the router stopped");
    assert_eq!(del["code"], 11);
    assert!(
        del["msg"].as_str().unwrap().contains("interfaces were removed"),
        "{del}"
    );
    assert!(bed.host_ip(&["link", "show", &host_veth_name("kept", "eth0")]).is_err());

    bed.router.start();
    bed.wait_ready();
    let id = format!("cni:{NETWORK}:kept");
    assert!(
        bed.allocation_ids().iter().any(|(i, _)| *i == id),
        "the address was kept"
    );
    bed.net("DEL", "kept", &netns, &conf)
        .success("DEL once the router is back");
    assert!(!bed.allocation_ids().iter().any(|(i, _)| *i == id));
}

/// STATUS says the router is ready; GC releases this network's stale allocations and keeps the valid ones
/// and other networks'.
#[test]
fn status_and_gc() {
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let conf = bed.conf("1.1.0");
    let status = bed.plugin(NET, "STATUS", "", Path::new(""), conf.to_string().as_bytes());
    assert!(status.stdout.trim().is_empty(), "{}", status.stdout);
    status.success("STATUS");
    let (a, b) = (bed.pod("a"), bed.pod("b"));
    bed.net("ADD", "live", &a, &conf).success("ADD live");
    bed.net("ADD", "stale", &b, &conf).success("ADD stale");
    bed.client()
        .allocate(&allocate_request("cni:othernet:stale", "eth0"))
        .unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    bed.plugin(NET, "GC", "", Path::new(""), gc.to_string().as_bytes())
        .success("GC");
    let ids: Vec<String> = bed.allocation_ids().into_iter().map(|(id, _)| id).collect();
    assert!(ids.contains(&format!("cni:{NETWORK}:live")), "{ids:?}");
    assert!(!ids.contains(&format!("cni:{NETWORK}:stale")), "{ids:?}");
    assert!(ids.contains(&"cni:othernet:stale".to_owned()), "{ids:?}");
    assert!(
        bed.host_ip(&["link", "show", &host_veth_name("stale", "eth0")])
            .is_err(),
        "GC removes stale veths"
    );
    assert!(bed.host_ip(&["link", "show", &host_veth_name("live", "eth0")]).is_ok());

    let no_list = bed.plugin(NET, "GC", "", Path::new(""), conf.to_string().as_bytes());
    assert_eq!(no_list.failure("GC without valid attachments")["code"], 7);
    bed.router.kill();
    let down = bed.plugin(NET, "STATUS", "", Path::new(""), conf.to_string().as_bytes());
    assert_eq!(down.failure("STATUS with the router stopped")["code"], 50);
}

/// A node's runtime starting 200 pods at once: 200 `weft-net ADD`s run concurrently against one router, and
/// every one succeeds, each pod with its own address, and the router holds exactly those 200. The router writes
/// every allocation to disk before it answers; allocations that arrive during a write share the next one (group
/// commit), which is what lets 200 finish within the plugin's deadline on a slow disk.
#[test]
fn two_hundred_concurrent_adds_all_succeed_with_distinct_addresses() {
    const PODS: usize = 200;
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let conf = bed.conf("1.0.0");
    let made = Instant::now();
    let pods: Vec<PathBuf> = (0..PODS).map(|i| bed.pod(&i.to_string())).collect();
    eprintln!("{PODS} pod namespaces made in {:?}", made.elapsed());
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let bed = &bed;
        let conf = &conf;
        let running: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, netns)| scope.spawn(move || bed.net("ADD", &format!("storm{i:03}"), netns, conf)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a plugin thread"))
            .collect()
    });
    let took = started.elapsed();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    eprintln!("{PODS} concurrent ADDs took {took:?} (slowest {slowest:?})");
    let mut addresses = BTreeSet::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let result = outcome.success(&format!("ADD storm{i:03}"));
        let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(addresses.insert(address.clone()), "{address} was handed out twice");
    }
    let held: Vec<(String, String)> = bed
        .allocation_ids()
        .into_iter()
        .filter(|(id, _)| id.starts_with(&format!("cni:{NETWORK}:storm")))
        .collect();
    assert_eq!(held.len(), PODS, "the router's allocations: {held:?}");
    // Both without the prefix length: the pod's is /32, the router's the pod range's.
    let bare = |a: &str| a.split('/').next().unwrap().to_owned();
    let held: BTreeSet<String> = held.iter().map(|(_, a)| bare(a)).collect();
    let answered: BTreeSet<String> = addresses.iter().map(|a| bare(a)).collect();
    assert_eq!(held, answered, "the router holds what it answered");
}

/// weft-ipam alone: an address with the router's prefix and gateway, the configured routes, DEL releases.
#[test]
fn ipam_plugin_allocates_and_releases() {
    let Some(tb) = Testbed::for_test(1) else { return };
    let mut bed = Bed::start(&tb);
    let netns = bed.pod("a");
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": NETWORK,
        "type": "ptp",
        "ipam": {
            "type": "weft-ipam",
            "apiSocket": bed.socket(),
            "logFile": bed.dir.path().join("log/ipam.log"),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    });
    let result = bed
        .plugin(IPAM, "ADD", "ipam1", &netns, conf.to_string().as_bytes())
        .success("IPAM ADD");
    let address = result["ips"][0]["address"].as_str().unwrap();
    assert!(address.starts_with("10.44.") && address.ends_with("/16"), "{result}");
    assert_eq!(result["ips"][0]["version"], "4");
    let host = bed.router.status().unwrap().host_address.unwrap();
    assert_eq!(result["ips"][0]["gateway"], host.to_string());
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0"}]));
    let mut with_prev = conf;
    with_prev["prevResult"] = result.clone();
    bed.plugin(IPAM, "CHECK", "ipam1", &netns, with_prev.to_string().as_bytes())
        .success("IPAM CHECK");
    bed.plugin(IPAM, "DEL", "ipam1", &netns, with_prev.to_string().as_bytes())
        .success("IPAM DEL");
    assert!(!bed.allocation_ids().iter().any(|(id, _)| id.ends_with(":ipam1")));
    assert!(
        std::fs::read_to_string(bed.dir.path().join("log/ipam.log"))
            .unwrap()
            .contains("container=ipam1")
    );
}

/// VERSION needs no router, no root and no config.
#[test]
fn version_lists_the_five_versions() {
    for bin in [NET, IPAM] {
        let out = Command::new(bin)
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let none = Command::new(bin)
            .env_remove("CNI_COMMAND")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!none.status.success());
        let err: Value = serde_json::from_slice(&none.stdout).unwrap();
        assert_eq!(err["code"], 4);
    }
}

/// A router that accepts and never answers fails ADD with code 11 within 10 s: the plugin never hangs a runtime.
/// Needs no root: the namespace is this process's own, and the failure comes before any netlink work.
#[test]
fn a_silent_router_fails_add_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "weft-net", "apiSocket": socket,
                      "logFile": dir.path().join("cni.log")});
    let started = Instant::now();
    let mut child = Command::new(NET)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "silent")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    // Accept the plugin's connection and hold it open without a word until the plugin hangs up. On a thread,
    // so a plugin that never connects fails the asserts below instead of blocking the test.
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            let _ = std::io::Read::read_to_end(&mut &conn, &mut Vec::new());
        }
    });
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 11, "{err}");
    assert!(took < Duration::from_secs(10), "ADD took {took:?}");
}
