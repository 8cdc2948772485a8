//! End-to-end tests of the real `weft` binary's IPAM state: the keys only the router may touch, a lost `ipam`
//! file, and a data directory that cannot be written (full, or read-only).
//!
//! Each router runs `weft launch` inside its host's namespace and is asked from the root namespace over its API
//! socket, with `weft` or the API's own client. Needs root, like every testbed test, and the binary built by
//! `cargo build -p weft-router --bin weft`. When a test fails, every router's log is printed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_api::blocking::Client;
use weft_api::types::{AllocateRequest, ErrorCode, ReleaseRequest};
use weft_tests::router::{Launch, Router, peer_addr, wait_for, wait_for_rings, workdir, write_secret};
use weft_tests::{InNamespace, testbed_or_skip};

const SECRET: &str = "correct horse battery staple";

/// The reproduction: `{"id":"weft:host","iface":"weft"}` sent to `/v1/ipam/release` freed the host's own
/// address, and the next pod got it while the TUN device still held it. Now the API refuses every key of the
/// router's own (`weft:` ids) for release and for allocation, the host keeps its address, and the next pod gets
/// another.
#[test]
fn the_routers_own_keys_are_refused_by_the_api() {
    let tb = testbed_or_skip!(1);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let h1 = Router::launch(tb.host(1), dir.path(), &secret, &[]);
    wait_for(&[&h1], Duration::from_secs(30), "h1's ring and host address", |s| {
        s[0].ipam.problem.is_none() && s[0].host_address.is_some()
    });
    let host = h1.status().unwrap().host_address.expect("waited for above");
    let client = Client::new(h1.api_socket(), Instant::now() + Duration::from_secs(10));

    let release = ReleaseRequest {
        iface: Some("weft".into()),
        ..ReleaseRequest::new("weft:host")
    };
    let refused = client.release(&release).expect_err("releasing weft:host is refused");
    let weft_api::ClientError::Api { error, .. } = &refused else {
        panic!("not the API's refusal: {refused}");
    };
    assert_eq!(error.code, ErrorCode::InvalidRequest, "{error:?}");
    assert!(
        error.error.contains("reserved for the router's own addresses"),
        "{error:?}"
    );
    for id in ["weft:host", "weft:other"] {
        let refused = client
            .allocate(&AllocateRequest::any(id))
            .expect_err("allocating a weft: id is refused");
        assert!(
            matches!(&refused, weft_api::ClientError::Api { error, .. } if error.code == ErrorCode::InvalidRequest),
            "{id}: {refused}"
        );
    }
    let out = h1.cli(&["ipam", "release", "weft:host"]);
    assert!(!out.status.success(), "weft ipam release weft:host succeeded: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserved"),
        "the CLI does not say why: {out:?}"
    );

    assert_eq!(
        h1.status().unwrap().host_address,
        Some(host),
        "the host lost its address"
    );
    let pod = h1.allocate_net("pod-after");
    assert_ne!(pod.addr(), host, "the next pod got the host's address");
}

/// Deleting a stopped router's `ipam` file used to make it start a new ring alone, silently, with every
/// allocation gone. Now, relaunched alone, it creates no ring and says why, naming the file and both ways out;
/// relaunched with a PEER of the mesh, it receives the ring, in which it still owns its ranges, and takes them back,
/// with the address of the pod still wired on its host: that one is not handed out again.
#[test]
fn a_router_whose_ipam_file_is_gone_creates_no_ring_and_recovers_from_a_peer() {
    let tb = testbed_or_skip!(2);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let mut h1 = Router::launch(tb.host(1), dir.path(), &secret, &[]);
    let mut h2 = Router::launch(tb.host(2), dir.path(), &secret, &[tb.host(1)]);
    wait_for(&[&h1, &h2], Duration::from_secs(30), "both to have the ring", |s| {
        s.iter().all(|s| s.ipam.problem.is_none())
    });
    // A pod wired as weft-net wires one: a host veth of its naming, and a /32 route to it. Its address is the lowest
    // h1 hands out after the host's, so after the loss it would be the next one handed out again.
    let pod: ipnet::Ipv4Net = h1.allocate("pod").parse().expect("an IPv4 CIDR");
    let veth = weft_podlink::cni_host_veth("pod", "eth0");
    let host = tb.host(1);
    host.exec_ok(["ip", "link", "add", &veth, "type", "veth", "peer", "name", "podpeer"])
        .unwrap();
    host.exec_ok(["ip", "link", "set", &veth, "up"]).unwrap();
    host.exec_ok([
        "ip",
        "route",
        "add",
        &format!("{}/32", pod.addr()),
        "dev",
        &veth,
        "scope",
        "link",
    ])
    .unwrap();
    h1.allocate("before");
    h2.allocate("before");
    let h1_name = h1.status().unwrap().name;
    wait_for_rings(&[&h1, &h2], Duration::from_secs(30), "the rings to agree", |ring| {
        ring.owns(&h1_name)
    });
    let h1_ranges: Vec<(String, String)> = h1
        .ring()
        .ranges
        .into_iter()
        .filter(|(_, _, owner)| *owner == h1_name)
        .map(|(first, last, _)| (first, last))
        .collect();

    h1.kill();
    h2.kill();
    let ipam = h1.data_dir().join("ipam");
    fs::remove_file(&ipam).expect("h1 had an ipam file");

    // Alone: no new ring, and the reason names the file and both ways out.
    h1.start();
    let mut problem = String::new();
    wait_for(&[&h1], Duration::from_secs(30), "h1 to say why it has no ring", |s| {
        problem = s[0].ipam.problem.clone().unwrap_or_default();
        problem.contains("missing")
    });
    for needed in [ipam.to_str().unwrap(), "PEER", "weft reset"] {
        assert!(
            problem.contains(needed),
            "{needed:?} is not in h1's reason: {problem:?}"
        );
    }
    // Checked through Router::ring: `weft ipam --json` must succeed, so an error cannot pass for "no h1".
    let ring = h1.ring();
    assert!(
        !ring.owners.contains(&h1_name)
            && ring.ranges.iter().all(|(_, _, owner)| *owner != h1_name)
            && ring
                .reclaims
                .iter()
                .all(|(name, _, heir, _)| *name != h1_name && heir.as_ref() != Some(&h1_name)),
        "h1 started a ring of its own after losing its state: {ring:#?}"
    );
    assert!(
        h1.log().contains("the IPAM state file is missing"),
        "nothing in h1's log"
    );
    h1.kill();

    // With a PEER: it takes its ranges back from the mesh.
    h2.start();
    drop(h1);
    let h1 = Launch::new(tb.host(1), dir.path(), &secret)
        .listen(peer_addr(tb.host(1)))
        .peer(peer_addr(tb.host(2)))
        .start();
    wait_for(&[&h1], Duration::from_secs(30), "h1 to have the ring back", |s| {
        s[0].ipam.problem.is_none() && s[0].ipam.owned > 0
    });
    assert_eq!(h1.status().unwrap().name, h1_name, "h1 kept its identity");
    let ring = h1.ring();
    for (first, last) in &h1_ranges {
        assert_eq!(
            ring.owners_within(first, last),
            BTreeSet::from([h1_name.as_str()]),
            "{first}-{last}, h1's before, is not h1's now: {ring:#?}"
        );
    }
    assert!(
        h1.log().contains("took this router's ranges back"),
        "the log does not say what was lost"
    );
    let held = h1.allocations();
    assert!(
        held.iter()
            .any(|(id, addr)| id == "weft:recovered" && addr.starts_with(&format!("{}/", pod.addr()))),
        "the pod's address was not taken back: {held:?}"
    );
    let after: ipnet::Ipv4Net = h1.allocate("after").parse().expect("an IPv4 CIDR");
    assert_ne!(after.addr(), pod.addr(), "the pod's address was handed out again");
}

/// A router killed before its first change of IPAM state (here, waiting for a second router to create the ring
/// with) is not one that lost its state: its first launch wrote an empty `ipam` file beside the new identity, so
/// relaunched alone it creates its ring. Without that file it would be taken for a router whose state was deleted
/// and refuse to create a ring until `weft reset`.
#[test]
fn a_router_killed_before_its_first_change_has_not_lost_its_state() {
    let tb = testbed_or_skip!(1);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let mut h1 = Router::launch_with(tb.host(1), dir.path(), &secret, &[], &["--init-peer-count", "2"]);
    wait_for(&[&h1], Duration::from_secs(30), "h1 to wait for a second router", |s| {
        s[0].ipam
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("init-peer-count"))
    });
    assert!(
        h1.data_dir().join("ipam").exists(),
        "the first launch wrote no ipam file beside the identity"
    );
    h1.kill();
    drop(h1);

    let h1 = Router::launch(tb.host(1), dir.path(), &secret, &[]);
    wait_for(&[&h1], Duration::from_secs(30), "h1's ring, created alone", |s| {
        s[0].ipam.problem.is_none() && s[0].host_address.is_some()
    });
    assert!(
        !h1.log().contains("the IPAM state file is missing"),
        "h1 was taken for a router that lost its state"
    );
    h1.allocate("pod");
}

/// A data directory on a full tmpfs fails the allocation with `unavailable: cannot persist: no space left on
/// device`, and nothing else: `weft status` answers, and once space is freed the next allocation succeeds and
/// the failed one is not recorded. A read-only data directory behaves the same (`read-only file system`).
#[test]
fn a_full_or_read_only_data_directory_fails_the_allocation_not_the_router() {
    let tb = testbed_or_skip!(1);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let data = dir.path().join("h1");
    let mount = Tmpfs::mount(&data, "512k");
    let h1 = Router::launch(tb.host(1), dir.path(), &secret, &[]);
    wait_for(&[&h1], Duration::from_secs(30), "h1's ring", |s| {
        s[0].ipam.problem.is_none()
    });
    h1.allocate("before");
    let client = Client::new(h1.api_socket(), Instant::now() + Duration::from_secs(60));

    let filler = data.join("filler");
    fill(&filler);
    let failed = client
        .allocate(&AllocateRequest::any("on-a-full-disk"))
        .expect_err("an allocation on a full disk fails");
    assert!(
        matches!(&failed, weft_api::ClientError::Api { error, .. }
            if error.code == ErrorCode::Unavailable && error.error == "cannot persist: no space left on device"),
        "{failed:?}"
    );
    let out = h1.cli(&["ipam", "allocate", "on-a-full-disk-too"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot persist: no space left on device"),
        "{out:?}"
    );
    let status = h1.status().expect("weft status answers on a full disk");
    assert!(status.ipam.problem.is_none(), "{status:?}");

    fs::remove_file(&filler).unwrap();
    h1.allocate("after-space-freed");
    assert_allocations(&h1, &["before", "after-space-freed"]);

    mount.remount("ro");
    let failed = client
        .release(&ReleaseRequest::new("before"))
        .expect_err("a release on a read-only disk fails");
    assert!(
        matches!(&failed, weft_api::ClientError::Api { error, .. }
            if error.code == ErrorCode::Unavailable && error.error == "cannot persist: read-only file system"),
        "{failed:?}"
    );
    let failed = client
        .allocate(&AllocateRequest::any("on-a-read-only-disk"))
        .expect_err("an allocation on a read-only disk fails");
    assert!(
        matches!(&failed, weft_api::ClientError::Api { error, .. } if error.error == "cannot persist: read-only file system"),
        "{failed:?}"
    );
    h1.status().expect("weft status answers on a read-only disk");
    mount.remount("rw");
    h1.allocate("after-read-write");
    assert_allocations(&h1, &["before", "after-space-freed", "after-read-write"]);
}

/// Fills the file system `path` is on with `path`, until it is full.
fn fill(path: &Path) {
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", path.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "dd did not fill the disk: {out:?}"
    );
}

/// The router's allocations are exactly `ids` (with the default interface), each with its own address.
#[track_caller]
fn assert_allocations(router: &Router<'_>, ids: &[&str]) {
    let allocations = router.allocations();
    let mut got: Vec<&str> = allocations
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !id.starts_with("weft:"))
        .collect();
    got.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the allocations recorded");
}

/// A small tmpfs mounted over a directory for one test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "weft-test"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs on {}", at.display());
        Self(at.to_owned())
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o remount,{mode} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    /// Unmounts lazily, so that a router still holding a file open cannot keep the mount. A failure is printed,
    /// not raised: a panic here would abort a test that may be failing already.
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(&self.0).status() {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "cannot unmount the test's tmpfs at {} ({other:?}); unmount it with `umount -l {0}`",
                self.0.display()
            ),
        }
    }
}
