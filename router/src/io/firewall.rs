//! The host firewall rules pod traffic needs: masquerading out to the rest
//! of the world, and getting past a host firewall whose forward policy drops.
//! Each goes in only where it is needed, since a netfilter hook costs every
//! packet that passes it.
//!
//! # Masquerading: Weft's own table (`table ip weft`, through nftables)
//!
//! ```text
//! table ip weft {
//!   chain postrouting {            # only with masquerading on (the default)
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr POD ip daddr != POD oifname != "weft" counter masquerade
//!   }
//! }
//! ```
//!
//! Pods keep their own address inside the mesh (no NAT between pods, which
//! is what Kubernetes asks for) and are masqueraded behind the host's
//! address everywhere else; `--no-masquerade` leaves the chain out, for
//! networks that route the pod range themselves. [`apply`] writes the whole
//! table in one `nft` transaction (add, delete, add again: so it works
//! whether or not the table exists), so re-applying never leaves a moment
//! without rules and changes of pod range or TUN name take effect whole.
//!
//! # Getting past a FORWARD chain that drops: iptables
//!
//! Docker (and ufw, and firewalld's iptables backend) set the filter
//! FORWARD policy to DROP, which with iptables-nft is `table ip filter {
//! chain FORWARD { ... policy drop; } }`. In nftables an `accept` ends only
//! the base chain it is in: the packet goes on to every other base chain on
//! the same hook, and a `drop` in any of them is final. Tested here in a
//! namespace with `iptables -P FORWARD DROP`: pod traffic that a forward
//! chain in `table ip weft` accepts is still dropped. So the verdict must
//! come from inside the chain that drops.
//!
//! Rules written into iptables-nft's table must be rules iptables can read
//! back. Also tested here (iptables 1.8.9, nft 1.0.6): a rule added with
//! `nft` that matches interfaces or addresses (`iifname "weft" accept
//! comment "weft"`) reads back as `-i weft -m comment --comment weft -j
//! ACCEPT`, but one with `ct state established,related` makes iptables give
//! up on the whole chain (``chain `FORWARD' in table `filter' is
//! incompatible, use 'nft' tool``), and Docker, which edits that chain with
//! iptables, would fail with it. Connection tracking state is exactly what
//! return traffic to pods needs, so those rules go in with `iptables`
//! itself, the way Docker's, flannel's and Weave's do: a `WEFT-FORWARD`
//! chain
//!
//! ```text
//! -A WEFT-FORWARD -i weft -j ACCEPT
//! -A WEFT-FORWARD -o weft -j ACCEPT
//! -A WEFT-FORWARD -s POD -j ACCEPT
//! -A WEFT-FORWARD -d POD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//! ```
//!
//! (written with `iptables-restore --noflush`, which replaces the chain's
//! rules in one step), and one jump to it at the top of `FORWARD`, tagged
//! with the comment `weft`. At the top, so a terminal `-j REJECT` that some
//! distributions append cannot shadow it; its rules match only pod
//! traffic. Going through the `iptables` binary also covers hosts whose
//! iptables is the legacy backend, where the DROP is invisible to `nft`.
//! Without an `iptables` binary nothing on the host can have set such a
//! policy through iptables, and this part is skipped.
//!
//! # Only where the FORWARD chain can refuse
//!
//! The chain and its jump go in only when the filter `FORWARD` chain can
//! refuse traffic: its policy is not ACCEPT, or it holds any rule besides
//! Weft's jump (Docker's, kube-proxy's and firewalld's chains all do). On a
//! host whose `FORWARD` chain is a bare ACCEPT nothing refuses pod traffic,
//! and the rules would only cost: the forward hook on every forwarded
//! packet, and, through the `conntrack` match, connection tracking for
//! every packet in the namespace, tunnel datagrams included. Measured on the
//! benchmark testbed (`bench/sockperf-ab.sh`): about 14 µs of a 105 µs
//! pod-to-pod round trip for tracking, and 4 µs more for the hooks. Left
//! over from an earlier apply on such a host, the jump and chain are
//! removed. Masquerading needs tracking itself, so with it (the default)
//! tracking is on all the same; without it, on such a host, Weft adds no
//! netfilter hook at all.
//!
//! The daemon looks at the `FORWARD` chain every few seconds
//! ([`forward_can_refuse_now`], one `iptables -S FORWARD`) and applies
//! again when the answer changes, so a firewall started after Weft (Docker
//! setting the policy to DROP) gets the rules within that interval.
//!
//! # Lifetime
//!
//! Rules stay when the router stops, so a restart does not cut the pods'
//! connections; only [`remove`] (for `weft reset`) deletes them. Both
//! functions are idempotent. Other programs may flush iptables (a firewalld
//! reload, an iptables-restore of a saved file), so the daemon should call
//! [`apply`] again now and then; it is cheap.
//!
//! The functions block on child processes (`nft`, `iptables`); call them
//! from `spawn_blocking` in async code. Children inherit the calling
//! thread's network namespace.

use std::borrow::Cow;
use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use tracing::{debug, info};

/// What [`apply`] did with iptables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Iptables {
    /// `FORWARD` can refuse traffic, so the `WEFT-FORWARD` chain is filled
    /// and `FORWARD` jumps to it.
    Installed,
    /// `FORWARD` refuses nothing, so there is no `WEFT-FORWARD` chain and no
    /// jump (any left from before were removed).
    NotNeeded,
    /// There is no `iptables` binary, so no iptables policy to get past.
    NotInstalled,
}

impl Iptables {
    /// What this says about the `FORWARD` chain, in the terms of
    /// [`forward_can_refuse_now`]: whether it can refuse traffic, or `None`
    /// without iptables.
    pub fn forward_can_refuse(self) -> Option<bool> {
        match self {
            Self::Installed => Some(true),
            Self::NotNeeded => Some(false),
            Self::NotInstalled => None,
        }
    }
}

/// What [`remove`] found to remove.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[must_use]
pub struct Removed {
    /// Whether `table ip weft` existed.
    pub table: bool,
    /// How many `-j WEFT-FORWARD` jumps tagged `weft` were deleted.
    pub jumps: usize,
    /// Whether the `WEFT-FORWARD` chain existed.
    pub chain: bool,
}

/// Why the firewall rules could not be applied or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// There is no `nft` binary.
    #[error(
        "the `nft` command is not installed; Weft writes its firewall rules with it: install the nftables \
         package (`apt-get install nftables` on Debian and Ubuntu, `dnf install nftables` on Fedora and RHEL)"
    )]
    NftMissing,
    /// A command could not be started.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why it could not run.
        #[source]
        source: io::Error,
    },
    /// A command failed.
    #[error("{program} failed while {doing}: {stderr}")]
    Failed {
        /// The program.
        program: &'static str,
        /// What it was asked to do.
        doing: String,
        /// Its error output.
        stderr: String,
    },
}

/// Installs or updates Weft's rules for `pod_range` and the TUN device
/// `tun`, with or without masquerading: `table ip weft` in one nftables
/// transaction, then, if the `FORWARD` chain can refuse traffic, the
/// `WEFT-FORWARD` chain and its jump in iptables; if it cannot, any such
/// chain and jump are removed (see the module docs for why).
///
/// # Errors
///
/// [`FirewallError::NftMissing`] without `nft`; [`FirewallError::Failed`]
/// with the tool's message if it refuses.
pub fn apply(pod_range: Ipv4Net, tun: &str, masquerade: bool) -> Result<Iptables, FirewallError> {
    let pod_range = pod_range.trunc();
    nft_apply(&table(pod_range, tun, masquerade), "replacing table ip weft")?;
    let iptables = match forward_can_refuse_now()? {
        None => {
            debug!("no iptables binary: nothing to insert into a FORWARD chain");
            Iptables::NotInstalled
        }
        Some(false) => {
            let (jumps, chain) = remove_forward_chain()?;
            if jumps > 0 || chain {
                info!("the FORWARD chain refuses nothing now: removed the WEFT-FORWARD chain and its jump");
            }
            Iptables::NotNeeded
        }
        Some(true) => {
            let mut restore = format!("*filter\n:{CHAIN} - [0:0]\n");
            for rule in forward_rules(pod_range, tun) {
                restore.push_str(&format!("-A {CHAIN} {}\n", rule.join(" ")));
            }
            restore.push_str("COMMIT\n");
            run_with_input(
                "iptables-restore",
                &["-w", "--noflush"],
                &restore,
                "filling the WEFT-FORWARD chain",
            )?;
            if !run("iptables", &jump_args("-C"))?.status.success() {
                let mut insert = jump_args("-I");
                insert.insert(3, "1");
                check(
                    run("iptables", &insert)?,
                    "iptables",
                    "inserting the jump to WEFT-FORWARD",
                )?;
            }
            Iptables::Installed
        }
    };
    debug!(%pod_range, tun, masquerade, ?iptables, "firewall rules applied");
    Ok(iptables)
}

/// Whether the filter `FORWARD` chain can refuse forwarded traffic now (its
/// policy is not ACCEPT, or it holds any rule but Weft's jump), or `None`
/// if there is no `iptables` binary. One `iptables -S FORWARD`: cheap
/// enough to ask every few seconds.
///
/// # Errors
///
/// If `iptables` cannot run or fails.
pub fn forward_can_refuse_now() -> Result<Option<bool>, FirewallError> {
    if !iptables_installed()? {
        return Ok(None);
    }
    let listing = run("iptables", &["-w", "-S", "FORWARD"])?;
    let refuses = forward_can_refuse(&String::from_utf8_lossy(&listing.stdout));
    check(listing, "iptables", "listing the FORWARD chain")?;
    Ok(Some(refuses))
}

/// Deletes everything [`apply`] added: `table ip weft`, the jumps tagged
/// `weft` from `FORWARD`, and the `WEFT-FORWARD` chain. For `weft reset`;
/// a clean shutdown keeps the rules. Removing twice is fine.
///
/// # Errors
///
/// As [`apply`].
pub fn remove() -> Result<Removed, FirewallError> {
    let mut removed = Removed {
        table: run("nft", &["list", "table", "ip", TABLE])
            .map_err(nft_missing)?
            .status
            .success(),
        ..Removed::default()
    };
    // Adding first makes the deletion succeed whether or not it existed.
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(weft_table()));
    batch.delete(NfListObject::Table(weft_table()));
    nft_apply(&batch.to_nftables(), "deleting table ip weft")?;

    if iptables_installed()? {
        (removed.jumps, removed.chain) = remove_forward_chain()?;
    }
    info!(?removed, "firewall rules removed");
    Ok(removed)
}

/// The nftables document [`apply`] sends: create-or-keep, delete, and
/// create `table ip weft` afresh, with the masquerading chain if
/// `masquerade`.
pub fn table(pod_range: Ipv4Net, tun: &str, masquerade: bool) -> Nftables<'static> {
    let pod_range = pod_range.trunc();
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(weft_table()));
    batch.delete(NfListObject::Table(weft_table()));
    batch.add(NfListObject::Table(weft_table()));
    if masquerade {
        batch.add(NfListObject::Chain(base_chain(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        )));
        batch.add(rule(
            "postrouting",
            vec![
                matches(ip_field("saddr"), Operator::EQ, prefix(pod_range)),
                matches(ip_field("daddr"), Operator::NEQ, prefix(pod_range)),
                matches(meta(MetaKey::Oifname), Operator::NEQ, string(tun)),
                counter(),
                Statement::Masquerade(None),
            ],
            "pods to the world, behind the host's address",
        ));
    }
    batch.to_nftables()
}

/// The rules of the `WEFT-FORWARD` iptables chain, as `iptables` arguments.
fn forward_rules(pod_range: Ipv4Net, tun: &str) -> Vec<Vec<String>> {
    let pod = pod_range.to_string();
    let rule = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    vec![
        rule(&["-i", tun, "-j", "ACCEPT"]),
        rule(&["-o", tun, "-j", "ACCEPT"]),
        rule(&["-s", &pod, "-j", "ACCEPT"]),
        rule(&[
            "-d",
            &pod,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ]),
    ]
}

/// Deletes the jumps tagged `weft` from `FORWARD` and the `WEFT-FORWARD`
/// chain; returns how many jumps there were and whether the chain was.
fn remove_forward_chain() -> Result<(usize, bool), FirewallError> {
    let mut jumps = 0;
    // Bounded: each successful -D removes one jump.
    while jumps < 64 && run("iptables", &jump_args("-D"))?.status.success() {
        jumps += 1;
    }
    if !run("iptables", &["-w", "-S", CHAIN])?.status.success() {
        return Ok((jumps, false));
    }
    check(
        run("iptables", &["-w", "-F", CHAIN])?,
        "iptables",
        "flushing WEFT-FORWARD",
    )?;
    check(
        run("iptables", &["-w", "-X", CHAIN])?,
        "iptables",
        "deleting WEFT-FORWARD",
    )?;
    Ok((jumps, true))
}

/// Whether the filter `FORWARD` chain, as `iptables -S FORWARD` lists it,
/// can refuse forwarded traffic: a policy other than ACCEPT, or any rule but
/// Weft's own jump. Conservative on purpose: an unknown rule counts as one
/// that might refuse.
fn forward_can_refuse(listing: &str) -> bool {
    let jump = format!("-A FORWARD {}", jump_args("-A")[3..].join(" "));
    listing.lines().map(str::trim).any(|line| {
        if let Some(policy) = line.strip_prefix("-P FORWARD ") {
            policy != "ACCEPT"
        } else {
            line.starts_with("-A ") && line != jump
        }
    })
}

/// `iptables -w <op> FORWARD -m comment --comment weft -j WEFT-FORWARD`.
fn jump_args(op: &'static str) -> Vec<&'static str> {
    vec!["-w", op, "FORWARD", "-m", "comment", "--comment", COMMENT, "-j", CHAIN]
}

fn iptables_installed() -> Result<bool, FirewallError> {
    match Command::new("iptables")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FirewallError::Spawn {
            program: "iptables",
            source,
        }),
    }
}

fn nft_apply(doc: &Nftables<'_>, doing: &str) -> Result<(), FirewallError> {
    let json = serde_json::to_string(doc).expect("nftables documents serialize");
    // Not nftables::helper::apply_ruleset: it leaves nft's stderr to the
    // daemon's, and the error then has no message to show.
    run_with_input("nft", &["-j", "-f", "-"], &json, doing).map_err(nft_missing)
}

fn nft_missing(e: FirewallError) -> FirewallError {
    match e {
        FirewallError::Spawn { program: "nft", source } if source.kind() == io::ErrorKind::NotFound => {
            FirewallError::NftMissing
        }
        e => e,
    }
}

fn run(program: &'static str, args: &[&str]) -> Result<Output, FirewallError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FirewallError::Spawn { program, source })
}

fn run_with_input(program: &'static str, args: &[&str], input: &str, doing: &str) -> Result<(), FirewallError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { program, source })?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn { program, source })?;
    check(output, program, doing)?;
    written.map_err(|source| FirewallError::Spawn { program, source })
}

fn check(output: Output, program: &'static str, doing: &str) -> Result<(), FirewallError> {
    if output.status.success() {
        return Ok(());
    }
    Err(FirewallError::Failed {
        program,
        doing: doing.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn weft_table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    }
}

fn base_chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>, comment: &'static str) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        comment: Some(comment.into()),
        ..Rule::default()
    })
}

fn matches(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: "ip".into(),
        field: field.into(),
    })))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(&net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(s.to_owned().into())
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

const TABLE: &str = "weft";
const CHAIN: &str = "WEFT-FORWARD";
const COMMENT: &str = "weft";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_document_has_the_rules_the_docs_show() {
        let doc = table("10.32.0.0/12".parse().unwrap(), "weft", true);
        let json = serde_json::to_value(&doc).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        // add, delete, add the table; the nat chain and its one rule.
        assert_eq!(cmds.len(), 3 + 1 + 1, "{json:#}");
        assert!(cmds[1]["delete"]["table"]["name"] == "weft");
        let masq = &cmds[4]["add"]["rule"];
        assert_eq!(masq["chain"], "postrouting");
        assert_eq!(masq["expr"][1]["match"]["op"], "!=");
        assert_eq!(masq["expr"][1]["match"]["right"]["prefix"]["addr"], "10.32.0.0");
        assert_eq!(masq["expr"][1]["match"]["right"]["prefix"]["len"], 12);
        assert_eq!(masq["expr"][2]["match"]["right"], "weft");
        assert!(masq["expr"][4].get("masquerade").is_some(), "{masq:#}");
    }

    #[test]
    fn without_masquerading_the_table_has_no_chain() {
        let doc = table("10.32.0.0/12".parse().unwrap(), "weft", false);
        let json = serde_json::to_value(&doc).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3, "only the table, so no hook: {json:#}");
        assert!(cmds.iter().all(|c| c.to_string().contains("\"table\"")), "{json:#}");
    }

    #[test]
    fn a_missing_nft_names_the_package() {
        let e = nft_missing(FirewallError::Spawn {
            program: "nft",
            source: io::ErrorKind::NotFound.into(),
        });
        assert!(matches!(e, FirewallError::NftMissing));
        assert!(e.to_string().contains("apt-get install nftables"), "{e}");
        let other = nft_missing(FirewallError::Spawn {
            program: "iptables",
            source: io::ErrorKind::NotFound.into(),
        });
        assert!(matches!(other, FirewallError::Spawn { .. }));
    }

    #[test]
    fn iptables_rules_match_the_pod_range_and_the_tun() {
        let rules = forward_rules("10.32.0.0/12".parse().unwrap(), "weft");
        let lines: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-i weft -j ACCEPT",
                "-o weft -j ACCEPT",
                "-s 10.32.0.0/12 -j ACCEPT",
                "-d 10.32.0.0/12 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]
        );
    }

    #[test]
    fn only_a_bare_accepting_forward_chain_cannot_refuse() {
        let ours = "-A FORWARD -m comment --comment weft -j WEFT-FORWARD";
        assert!(!forward_can_refuse("-P FORWARD ACCEPT\n"));
        assert!(!forward_can_refuse(&format!("-P FORWARD ACCEPT\n{ours}\n")));
        assert!(forward_can_refuse("-P FORWARD DROP\n"), "Docker's policy");
        assert!(forward_can_refuse(&format!("-P FORWARD DROP\n{ours}\n")));
        assert!(
            forward_can_refuse("-P FORWARD ACCEPT\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n"),
            "a terminal reject under an accepting policy"
        );
        assert!(
            forward_can_refuse(&format!("-P FORWARD ACCEPT\n{ours}\n-A FORWARD -j KUBE-FORWARD\n")),
            "another program's chain may refuse"
        );
        assert!(
            forward_can_refuse("-P FORWARD ACCEPT\n-A FORWARD -m comment --comment other -j WEFT-FORWARD\n"),
            "only Weft's own jump, tag included, is known to accept"
        );
    }
}
