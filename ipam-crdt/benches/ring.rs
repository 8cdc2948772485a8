//! Encoded size and merge/encode/decode time of a ring of 1,000 owners.
//!
//! `cargo bench -p ipam-crdt --bench ring`. The sizes are printed once at
//! start (criterion measures only time).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ipam_crdt::{AllocKey, PeerName, Pool, Replica, Request, Ring, Want};

const OWNERS: u64 = 1_000;

/// A ring as a busy 1,000-router cluster would gossip it: genesis split over
/// the default /12, then every router allocated 20 addresses and every tenth
/// router donated half its space to its neighbour (fragmenting the ring).
/// Returns (older, newer): `newer` has every entry at a higher version.
fn rings() -> (Ring, Ring) {
    let seeds: Vec<_> = (1..=OWNERS)
        .map(|i| PeerName::from_u64(i * 0x9e37_79b9_7f4a_7c15))
        .collect();
    let pool = Pool::default_v4();
    let mut acc = Ring::new(pool, &seeds).expect("valid genesis");
    let older = acc.clone();
    for (i, me) in seeds.iter().enumerate() {
        let mut r = Replica::new(*me);
        let _ = r.merge(&acc).expect("same ring");
        for c in 0..20 {
            r.allocate(AllocKey::new(format!("c{c}"), "eth0").expect("valid key"), Request::Any)
                .expect("space");
        }
        if i % 10 == 0 {
            r.donate(seeds[(i + 1) % seeds.len()], Want::Any).expect("has space");
        }
        acc.merge(r.ring().expect("has ring")).expect("valid history");
    }
    (older, acc)
}

fn bench(c: &mut Criterion) {
    let (older, newer) = rings();
    let bytes = newer.encode();
    println!(
        "ring of {OWNERS} owners: {} entries, encoded {} bytes ({} bytes at genesis)",
        newer.len(),
        bytes.len(),
        older.encode().len()
    );
    c.bench_function("merge_1000_owners_all_entries_newer", |b| {
        b.iter_batched_ref(
            || older.clone(),
            |r| black_box(r.merge(black_box(&newer)).expect("same ring")),
            criterion::BatchSize::LargeInput,
        );
    });
    c.bench_function("merge_1000_owners_identical", |b| {
        b.iter_batched_ref(
            || newer.clone(),
            |r| black_box(r.merge(black_box(&newer)).expect("same ring")),
            criterion::BatchSize::LargeInput,
        );
    });
    c.bench_function("encode_1000_owners", |b| b.iter(|| black_box(newer.encode())));
    c.bench_function("decode_1000_owners", |b| {
        b.iter(|| black_box(Ring::decode(black_box(&bytes)).expect("valid")));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
