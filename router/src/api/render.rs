//! Human-readable forms of the API's replies, for `weft status` and friends.
//!
//! Pure functions from reply to text, so the layout is tested without a
//! router. `--json` output does not come through here: it is the reply itself.

use std::fmt::Write as _;

use weft_api::types::{AllocationView, PeerStatus, ReclaimState, ReclaimView, RingView, Status};

/// `weft status`: key-value lines in the spirit of `weave status`, then the peers table.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, here and below.
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{key:>15}: {value}");
    };
    line("Version", &s.version);
    line("Name", &who(&s.name, Some(&s.nickname)));
    line(
        "Connections",
        &format!(
            "{} established, {} peers known",
            s.connections_established,
            s.peers.len()
        ),
    );
    line("Host address", s.host_address.as_deref().unwrap_or("none"));
    line("IPAM range", &s.ipam.range);
    line(
        "IPAM",
        &format!(
            "owned {}, free {}, allocated {}",
            s.ipam.owned, s.ipam.free, s.ipam.allocated
        ),
    );
    if let Some(problem) = &s.ipam.problem {
        line("IPAM problem", problem);
    }
    if let Some(d) = &s.dataplane {
        line(
            "Data plane",
            &format!(
                "udp/{}, MTU {}, {} queue{}, offloads {}",
                d.port,
                d.mtu,
                d.queues,
                if d.queues == 1 { "" } else { "s" },
                if d.offload { "on" } else { "off" }
            ),
        );
        line(
            "Sessions",
            &format!(
                "{} of {} routers; packets in {}, out {}",
                d.sessions, d.peers, d.rx_packets, d.tx_packets
            ),
        );
        let mut drops: Vec<(&String, &u64)> = d.drops.iter().filter(|(_, n)| **n > 0).collect();
        drops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown = if drops.is_empty() {
            "none".to_owned()
        } else {
            drops
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line("Dropped", &shown);
    }
    if !s.peers.is_empty() {
        out.push('\n');
        out.push_str(&peers(&s.peers));
    }
    out
}

/// `weft peers`: one row per peer: its control connection (STATE) and
/// its data-plane session (DATA: whether pods reach its pods, and ENDPOINT:
/// where their traffic goes).
pub fn peers(peers: &[PeerStatus]) -> String {
    if peers.is_empty() {
        return "No peers: this router knows no other router and dials no address.\n".to_owned();
    }
    let rows = peers
        .iter()
        .map(|p| {
            let data = p.data.as_ref();
            let state = data.map_or_else(
                || "-".to_owned(),
                |d| match &d.via {
                    Some(via) => format!("{} via {via}", d.state),
                    None => d.state.to_string(),
                },
            );
            vec![
                opt(p.name.as_deref()),
                opt(p.nickname.as_deref()),
                opt(p.address.as_deref()),
                p.state.to_string(),
                state,
                opt(data.and_then(|d| d.endpoint.as_deref())),
                opt(p.reason.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            ("NAME", Align::Left),
            ("NICKNAME", Align::Left),
            ("ADDRESS", Align::Left),
            ("STATE", Align::Left),
            ("DATA", Align::Left),
            ("ENDPOINT", Align::Left),
            ("REASON", Align::Left),
        ],
        rows,
    )
}

/// `weft ipam allocations`: one row per allocation.
pub fn allocations(list: &[AllocationView]) -> String {
    if list.is_empty() {
        return "No allocations on this router.\n".to_owned();
    }
    let rows = list
        .iter()
        .map(|a| vec![a.id.clone(), a.iface.clone(), a.address.clone()])
        .collect();
    table(
        &[("ID", Align::Left), ("IFACE", Align::Left), ("ADDRESS", Align::Left)],
        rows,
    )
}

/// `weft ipam`: per-owner totals, the ranges, and any reclaims.
pub fn ring(r: &RingView) -> String {
    let mut out = format!("Range: {}\n", r.range);
    if r.ranges.is_empty() {
        out.push_str(
            "\nNo address ring yet: the initial routers have not agreed on one. \
             `weft status` shows which peers are connected.\n",
        );
        return out;
    }
    let total: u64 = r.owners.iter().map(|o| o.owned).sum();
    let owners = r
        .owners
        .iter()
        .map(|o| {
            vec![
                who(&o.name, o.nickname.as_deref()),
                o.owned.to_string(),
                share(o.owned, total),
                o.free.to_string(),
                o.allocated.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            ("OWNER", Align::Left),
            ("OWNED", Align::Right),
            ("SHARE", Align::Right),
            ("FREE", Align::Right),
            ("ALLOCATED", Align::Right),
        ],
        owners,
    ));
    let ranges = r
        .ranges
        .iter()
        .map(|g| {
            vec![
                format!("{}-{}", g.first, g.last),
                who(&g.owner, g.owner_nickname.as_deref()),
                g.free.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[("RANGE", Align::Left), ("OWNER", Align::Left), ("FREE", Align::Right)],
        ranges,
    ));
    if !r.reclaims.is_empty() {
        out.push_str("\nRemoved routers:\n");
        for rc in &r.reclaims {
            let _ = writeln!(out, "  {}", reclaim(rc));
        }
    }
    out
}

/// One line on the reclaim of a removed router (`weft rmpeer`, `weft ipam`).
pub fn reclaim(r: &ReclaimView) -> String {
    let line = reclaim_progress(r);
    let name = r.nickname.as_deref().unwrap_or(&r.name);
    let here = match r.held {
        0 => String::new(),
        n => format!(" ({n} held here)"),
    };
    if !r.stopped {
        format!(
            "{line}; its addresses stay held{here} (none is handed out) until it hears of its removal, or until `weft rmpeer --gone {name}` confirms its host is gone for good"
        )
    } else if r.held > 0 {
        format!(
            "{line}; its pods' addresses stay held{here} until it is reset, or until `weft rmpeer --gone {name}` confirms its host is gone for good"
        )
    } else {
        line
    }
}

fn reclaim_progress(r: &ReclaimView) -> String {
    let dead = who(&r.name, r.nickname.as_deref());
    match (r.state, r.heir.as_deref()) {
        (ReclaimState::Done, Some(heir)) => format!("{dead}: removed; its ranges were taken over by {heir}"),
        (ReclaimState::Pending, heir) => {
            let heir = heir.map_or_else(|| "no heir chosen yet".to_owned(), |h| format!("heir {h}"));
            if r.waiting_for.is_empty() {
                format!("{dead}: removed; reclaim pending ({heir})")
            } else {
                format!(
                    "{dead}: removed; reclaim pending ({heir}), waiting for votes from {}",
                    r.waiting_for.join(", ")
                )
            }
        }
        _ => format!("{dead}: removed"),
    }
}

/// `name (nickname)`, or the name alone.
fn who(name: &str, nickname: Option<&str>) -> String {
    match nickname {
        Some(nick) if !nick.is_empty() => format!("{name} ({nick})"),
        _ => name.to_owned(),
    }
}

fn opt(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// `part` as a percentage of `total`, one decimal.
fn share(part: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    // Lossy above 2^53 addresses, which no IPv4 pool reaches.
    let pct = part as f64 * 100.0 / total as f64;
    format!("{pct:.1}%")
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell, two spaces apart, no trailing spaces.
fn table(headers: &[(&str, Align)], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = headers.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for ((cell, (_, align)), width) in row.iter().zip(headers).zip(&widths) {
            if !line.is_empty() {
                line.push_str("  ");
            }
            let _ = match align {
                Align::Left => write!(line, "{cell:<width$}"),
                Align::Right => write!(line, "{cell:>width$}"),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::types::{DataState, IpamSummary, OwnerView, PeerData, PeerState, RangeView};

    fn sample_status() -> Status {
        Status {
            name: "00:00:00:00:00:00:00:01".into(),
            nickname: "node-1".into(),
            version: "0.1.0".into(),
            peers: vec![
                PeerStatus {
                    name: Some("00:00:00:00:00:00:00:02".into()),
                    nickname: Some("node-2".into()),
                    address: Some("192.0.2.2:6783".into()),
                    state: PeerState::Established,
                    reason: None,
                    data: Some(PeerData {
                        state: DataState::Up,
                        endpoint: Some("192.0.2.2:6784".into()),
                        via: None,
                    }),
                },
                PeerStatus {
                    name: Some("00:00:00:00:00:00:00:04".into()),
                    nickname: Some("node-4".into()),
                    address: Some("198.51.100.4:6783".into()),
                    state: PeerState::NotNeighbour,
                    reason: None,
                    data: Some(PeerData {
                        state: DataState::Up,
                        endpoint: Some("198.51.100.4:6784".into()),
                        via: Some("node-2".into()),
                    }),
                },
                PeerStatus {
                    name: None,
                    nickname: None,
                    address: Some("192.0.2.3:6783".into()),
                    state: PeerState::Retrying,
                    reason: Some("connection refused".into()),
                    data: Some(PeerData::down()),
                },
            ],
            ipam: IpamSummary {
                range: "10.32.0.0/12".into(),
                owned: 524_288,
                free: 524_285,
                allocated: 1,
                problem: None,
            },
            connections_established: 1,
            host_address: Some("10.32.0.1/12".into()),
            dataplane: None,
        }
    }

    #[test]
    fn status_layout() {
        let expected = "        Version: 0.1.0
           Name: 00:00:00:00:00:00:00:01 (node-1)
    Connections: 1 established, 3 peers known
   Host address: 10.32.0.1/12
     IPAM range: 10.32.0.0/12
           IPAM: owned 524288, free 524285, allocated 1

NAME                     NICKNAME  ADDRESS            STATE          DATA           ENDPOINT           REASON
00:00:00:00:00:00:00:02  node-2    192.0.2.2:6783     established    up             192.0.2.2:6784     -
00:00:00:00:00:00:00:04  node-4    198.51.100.4:6783  not_neighbour  up via node-2  198.51.100.4:6784  -
-                        -         192.0.2.3:6783     retrying       down           -                  connection refused
";
        assert_eq!(status(&sample_status()), expected);
    }

    #[test]
    fn status_without_peers_or_address() {
        let mut s = sample_status();
        s.peers.clear();
        s.host_address = None;
        let text = status(&s);
        assert!(text.contains("   Host address: none\n"), "{text}");
        assert!(!text.contains("NAME"), "{text}");
        assert!(peers(&[]).starts_with("No peers"));
    }

    fn sample_ring() -> RingView {
        RingView {
            range: "10.32.0.0/28".into(),
            ranges: vec![
                RangeView {
                    first: "10.32.0.0".into(),
                    last: "10.32.0.7".into(),
                    owner: "00:00:00:00:00:00:00:01".into(),
                    owner_nickname: Some("node-1".into()),
                    free: 6,
                },
                RangeView {
                    first: "10.32.0.8".into(),
                    last: "10.32.0.15".into(),
                    owner: "00:00:00:00:00:00:00:02".into(),
                    owner_nickname: None,
                    free: 7,
                },
            ],
            owners: vec![
                OwnerView {
                    name: "00:00:00:00:00:00:00:01".into(),
                    nickname: Some("node-1".into()),
                    owned: 8,
                    free: 6,
                    allocated: Some(1),
                },
                OwnerView {
                    name: "00:00:00:00:00:00:00:02".into(),
                    nickname: None,
                    owned: 8,
                    free: 7,
                    allocated: None,
                },
            ],
            reclaims: vec![ReclaimView {
                name: "00:00:00:00:00:00:00:03".into(),
                nickname: None,
                state: ReclaimState::Pending,
                heir: Some("00:00:00:00:00:00:00:01".into()),
                waiting_for: vec!["00:00:00:00:00:00:00:02".into()],
                stopped: true,
                held: 0,
            }],
        }
    }

    #[test]
    fn ring_layout() {
        let expected = "Range: 10.32.0.0/28

OWNER                             OWNED  SHARE  FREE  ALLOCATED
00:00:00:00:00:00:00:01 (node-1)      8  50.0%     6          1
00:00:00:00:00:00:00:02               8  50.0%     7          -

RANGE                 OWNER                             FREE
10.32.0.0-10.32.0.7   00:00:00:00:00:00:00:01 (node-1)     6
10.32.0.8-10.32.0.15  00:00:00:00:00:00:00:02              7

Removed routers:
  00:00:00:00:00:00:00:03: removed; reclaim pending (heir 00:00:00:00:00:00:00:01), \
waiting for votes from 00:00:00:00:00:00:00:02
";
        assert_eq!(ring(&sample_ring()), expected);
    }

    #[test]
    fn ring_without_ring() {
        let r = RingView {
            range: "10.32.0.0/12".into(),
            ranges: vec![],
            owners: vec![],
            reclaims: vec![],
        };
        let text = ring(&r);
        assert!(text.starts_with("Range: 10.32.0.0/12\n\nNo address ring yet"), "{text}");
    }

    #[test]
    fn reclaim_lines() {
        let mut r = sample_ring().reclaims.remove(0);
        r.nickname = Some("old".into());
        r.state = ReclaimState::Done;
        r.waiting_for.clear();
        assert_eq!(
            reclaim(&r),
            "00:00:00:00:00:00:00:03 (old): removed; its ranges were taken over by 00:00:00:00:00:00:00:01"
        );
        r.state = ReclaimState::Pending;
        r.heir = None;
        assert_eq!(
            reclaim(&r),
            "00:00:00:00:00:00:00:03 (old): removed; reclaim pending (no heir chosen yet)"
        );
        r.stopped = false;
        r.state = ReclaimState::Done;
        r.heir = Some("00:00:00:00:00:00:00:01".into());
        assert_eq!(
            reclaim(&r),
            "00:00:00:00:00:00:00:03 (old): removed; its ranges were taken over by 00:00:00:00:00:00:00:01; \
its addresses stay held (none is handed out) until it hears of its removal, or until \
`weft rmpeer --gone old` confirms its host is gone for good"
        );
        r.held = 7;
        assert_eq!(
            reclaim(&r),
            "00:00:00:00:00:00:00:03 (old): removed; its ranges were taken over by 00:00:00:00:00:00:00:01; \
its addresses stay held (7 held here) (none is handed out) until it hears of its removal, or until \
`weft rmpeer --gone old` confirms its host is gone for good"
        );
        r.stopped = true;
        assert_eq!(
            reclaim(&r),
            "00:00:00:00:00:00:00:03 (old): removed; its ranges were taken over by 00:00:00:00:00:00:00:01; \
its pods' addresses stay held (7 held here) until it is reset, or until `weft rmpeer --gone old` confirms its \
host is gone for good"
        );
    }

    #[test]
    fn allocations_layout() {
        let list = vec![
            crate::api::convert::allocation_view(
                &ipam_crdt::AllocKey::new("4f2c", "eth0").unwrap(),
                "10.32.0.5".parse().unwrap(),
                12,
            ),
            crate::api::convert::allocation_view(
                &ipam_crdt::AllocKey::new("a1", "net1").unwrap(),
                "10.32.0.17".parse().unwrap(),
                12,
            ),
        ];
        assert_eq!(
            allocations(&list),
            "ID    IFACE  ADDRESS\n4f2c  eth0   10.32.0.5/12\na1    net1   10.32.0.17/12\n"
        );
        assert!(allocations(&[]).starts_with("No allocations"));
    }

    #[test]
    fn share_handles_zero() {
        assert_eq!(share(1, 0), "-");
        assert_eq!(share(1, 3), "33.3%");
    }
}
