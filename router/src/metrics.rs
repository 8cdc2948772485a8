//! Prometheus metrics, `weft_*`, served at `GET /metrics` (`--metrics-addr`,
//! loopback by default).
//!
//! [`Metrics`] holds every series; the shells update it through its methods
//! (cores return data, and the shell counts what it carries out). Label
//! values are closed enums, so a typo cannot start a new series.
//!
//! | Series | Type | Labels |
//! |---|---|---|
//! | `weft_connections` | gauge | `state`: `established`, `dialing`, `retrying` |
//! | `weft_handshake_failures_total` | counter | `reason`: see [`HandshakeFailure`] |
//! | `weft_gossip_messages_total` | counter | `direction`: `in`, `out` |
//! | `weft_gossip_bytes_total` | counter | `direction`: `in`, `out` |
//! | `weft_ipam_addresses` | gauge | `kind`: `owned`, `free`, `allocated` |
//! | `weft_allocation_duration_seconds` | histogram | |
//! | `weft_dataplane_drops_total` | counter | `reason`: see `io::dataplane::DropReason` |
//! | `weft_dataplane_packets_total` | counter | `direction`: `in`, `out` |
//! | `weft_dataplane_syscalls_total` | counter | `call`: `tun_read`, `udp_send`, `udp_recv` |
//! | `weft_dataplane_sessions` | gauge | |
//! | `weft_dataplane_peers` | gauge | `state`: `up`, `connecting`, `down` (as `weft status` shows `data.state`) |

use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// Every metric of one router, and the registry that encodes them.
///
/// Updating is lock-free (atomics) apart from the first use of a label
/// value; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<StateLabel, Gauge<u64, AtomicU64>>,
    handshake_failures: Family<ReasonLabel, Counter>,
    gossip_messages: Family<DirectionLabel, Counter>,
    gossip_bytes: Family<DirectionLabel, Counter>,
    ipam_addresses: Family<KindLabel, Gauge<u64, AtomicU64>>,
    allocation_duration: Histogram,
    malformed_ipam: Counter,
    ipam_writes: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// A registry with every `weft_*` series, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let connections = Family::<StateLabel, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "connections",
            "Connections to other routers, by state",
            connections.clone(),
        );
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "handshake_failures",
            "Connection handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        let gossip_messages = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "gossip_messages",
            "Gossip messages sent (out) and received (in)",
            gossip_messages.clone(),
        );
        let gossip_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register_with_unit(
            "gossip",
            "Bytes of gossip sent (out) and received (in)",
            Unit::Bytes,
            gossip_bytes.clone(),
        );
        let ipam_addresses = Family::<KindLabel, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "ipam_addresses",
            "Addresses of the pod range this router owns, has free, and has allocated",
            ipam_addresses.clone(),
        );
        let allocation_duration = Histogram::new(exponential_buckets(
            ALLOCATION_BUCKET_START,
            ALLOCATION_BUCKET_FACTOR,
            ALLOCATION_BUCKETS,
        ));
        registry.register_with_unit(
            "allocation_duration",
            "Time to answer an address allocation, waits for the ring and donations included",
            Unit::Seconds,
            allocation_duration.clone(),
        );
        let malformed_ipam = Counter::default();
        registry.register(
            "ipam_malformed_messages",
            "IPAM messages from other routers that could not be decoded and were dropped",
            malformed_ipam.clone(),
        );
        let ipam_writes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "ipam_state_writes",
            "Writes of the IPAM state to the data directory (each one fsync), by result",
            ipam_writes.clone(),
        );
        for result in [WriteResult::Ok, WriteResult::Failed] {
            ipam_writes.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        // Every label value exists from the start, so dashboards see zeros, not gaps.
        for state in [ConnState::Established, ConnState::Dialing, ConnState::Retrying] {
            connections.get_or_create(&StateLabel { state }).set(0);
        }
        for direction in [Direction::In, Direction::Out] {
            gossip_messages.get_or_create(&DirectionLabel { direction }).inc_by(0);
            gossip_bytes.get_or_create(&DirectionLabel { direction }).inc_by(0);
        }
        for kind in [AddressKind::Owned, AddressKind::Free, AddressKind::Allocated] {
            ipam_addresses.get_or_create(&KindLabel { kind }).set(0);
        }
        Self {
            registry,
            connections,
            handshake_failures,
            gossip_messages,
            gossip_bytes,
            ipam_addresses,
            allocation_duration,
            malformed_ipam,
            ipam_writes,
        }
    }

    /// Counts one write of the IPAM state, done or failed.
    pub fn ipam_write(&self, ok: bool) {
        let result = if ok { WriteResult::Ok } else { WriteResult::Failed };
        self.ipam_writes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one IPAM message dropped as malformed.
    pub fn malformed_ipam(&self) {
        self.malformed_ipam.inc();
    }

    /// Sets how many connections are in `state`.
    pub fn set_connections(&self, state: ConnState, count: u64) {
        self.connections.get_or_create(&StateLabel { state }).set(count);
    }

    /// Counts one failed handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts one gossip message of `bytes` bytes.
    pub fn gossip(&self, direction: Direction, bytes: usize) {
        let label = DirectionLabel { direction };
        self.gossip_messages.get_or_create(&label).inc();
        self.gossip_bytes
            .get_or_create(&label)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Sets the IPAM gauges from this router's counts.
    pub fn set_ipam(&self, owned: u64, free: u64, allocated: u64) {
        for (kind, value) in [
            (AddressKind::Owned, owned),
            (AddressKind::Free, free),
            (AddressKind::Allocated, allocated),
        ] {
            self.ipam_addresses.get_or_create(&KindLabel { kind }).set(value);
        }
    }

    /// Records how long one allocation took (measured by the caller's clock).
    pub fn observe_allocation(&self, took: Duration) {
        self.allocation_duration.observe(took.as_secs_f64());
    }

    /// Every series in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every label value encoder here only writes.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }
}

impl Metrics {
    /// The series of [`Metrics::new`] and the data plane's, which `read`
    /// gives at each scrape (the packet path's counters are atomics it
    /// bumps; nothing is copied in between).
    pub fn with_dataplane(read: impl Fn() -> DataplaneCounts + Send + Sync + 'static) -> Self {
        let mut m = Self::new();
        m.registry.register_collector(Box::new(DataCollector(Box::new(read))));
        m
    }
}

/// The data plane's counters at one moment, as plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneCounts {
    /// Drops by reason (every reason listed).
    pub drops: Vec<(&'static str, u64)>,
    /// Inner packets received from other routers and delivered.
    pub packets_in: u64,
    /// Inner packets sent to other routers.
    pub packets_out: u64,
    /// System calls of the packet path by call (`tun_read`, ...).
    pub syscalls: Vec<(&'static str, u64)>,
    /// Routers with a data-plane session.
    pub sessions: u64,
    /// Routers by whether their data plane is `up`, `connecting` or `down`.
    pub peers: Vec<(&'static str, u64)>,
}

/// Reads the data plane's counters at scrape time.
struct DataCollector(Box<dyn Fn() -> DataplaneCounts + Send + Sync>);

impl fmt::Debug for DataCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataCollector")
    }
}

impl prometheus_client::collector::Collector for DataCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let c = (self.0)();
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let mut family = encoder.encode_descriptor(
            "dataplane_drops",
            "Packets and datagrams the data plane dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &c.drops {
            let labels = [("reason", *reason)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "dataplane_packets",
            "Inner packets the data plane sent (out) to and received (in) from other routers",
            None,
            MetricType::Counter,
        )?;
        for (direction, n) in [("in", c.packets_in), ("out", c.packets_out)] {
            let labels = [("direction", direction)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "dataplane_syscalls",
            "System calls the packet path made to move packets, by call (packets per call shows batching at work)",
            None,
            MetricType::Counter,
        )?;
        for (call, n) in &c.syscalls {
            let labels = [("call", *call)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        gauge(c.sessions).encode(encoder.encode_descriptor(
            "dataplane_sessions",
            "Routers this router has a data-plane session with",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "dataplane_peers",
            "Routers by whether their data plane can be reached: up, connecting (a handshake unanswered for less \
             than 90 s), down",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &c.peers {
            let labels = [("state", *state)];
            gauge(*n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
///
/// # Errors
/// Only if the listener fails for good.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], metrics.encode())
}

/// The state of a connection to another router (`weft_connections{state}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnState {
    /// Handshake done: `established`.
    Established,
    /// An attempt is under way: `dialing`.
    Dialing,
    /// Waiting to try again after a failure: `retrying`.
    Retrying,
}

impl ConnState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Dialing => "dialing",
            Self::Retrying => "retrying",
        }
    }
}

/// Why a handshake failed (`weft_handshake_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The peer proved no knowledge of the cluster secret, or a key did not verify: `auth`.
    Auth,
    /// A handshake message did not parse: `malformed`.
    Malformed,
    /// The peer speaks an incompatible protocol version: `incompatible`.
    Incompatible,
    /// The handshake did not finish in time: `timeout`.
    Timeout,
    /// The peer turned out to be this router, or one already connected: `duplicate`.
    Duplicate,
    /// The connection failed underneath (refused, reset, unreachable): `io`.
    Io,
}

impl HandshakeFailure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Malformed => "malformed",
            Self::Incompatible => "incompatible",
            Self::Timeout => "timeout",
            Self::Duplicate => "duplicate",
            Self::Io => "io",
        }
    }
}

/// Which way gossip went (`direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received: `in`.
    In,
    /// Sent: `out`.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// Which IPAM count (`weft_ipam_addresses{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKind {
    Owned,
    Free,
    Allocated,
}

impl AddressKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Owned => "owned",
            Self::Free => "free",
            Self::Allocated => "allocated",
        }
    }
}

/// How a write of the IPAM state ended (`weft_ipam_state_writes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WriteResult {
    Ok,
    Failed,
}

impl WriteResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
        }
    }
}

/// Implements [`EncodeLabelValue`] by the type's `as_str`.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value!(ConnState, HandshakeFailure, Direction, AddressKind, WriteResult);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: ConnState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: HandshakeFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: AddressKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: WriteResult,
}

/// The OpenMetrics text format's content type.
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Allocation buckets: 0.5 ms, 2 ms, 8 ms, ... 32 s, from a local allocation
/// (well under a millisecond) through donations over the network to the
/// 30 s wait for a ring.
const ALLOCATION_BUCKET_START: f64 = 0.0005;
const ALLOCATION_BUCKET_FACTOR: f64 = 4.0;
const ALLOCATION_BUCKETS: u16 = 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_names_and_labels() {
        let m = Metrics::new();
        m.set_connections(ConnState::Established, 3);
        m.set_connections(ConnState::Retrying, 1);
        m.handshake_failed(HandshakeFailure::Auth);
        m.handshake_failed(HandshakeFailure::Auth);
        m.handshake_failed(HandshakeFailure::Timeout);
        m.gossip(Direction::Out, 100);
        m.gossip(Direction::Out, 20);
        m.gossip(Direction::In, 7);
        m.set_ipam(8, 6, 2);
        m.observe_allocation(Duration::from_millis(1));
        let text = m.encode();
        for line in [
            "weft_connections{state=\"established\"} 3",
            "weft_connections{state=\"dialing\"} 0",
            "weft_connections{state=\"retrying\"} 1",
            "weft_handshake_failures_total{reason=\"auth\"} 2",
            "weft_handshake_failures_total{reason=\"timeout\"} 1",
            "weft_gossip_messages_total{direction=\"out\"} 2",
            "weft_gossip_messages_total{direction=\"in\"} 1",
            "weft_gossip_bytes_total{direction=\"out\"} 120",
            "weft_gossip_bytes_total{direction=\"in\"} 7",
            "weft_ipam_addresses{kind=\"owned\"} 8",
            "weft_ipam_addresses{kind=\"free\"} 6",
            "weft_ipam_addresses{kind=\"allocated\"} 2",
            "weft_allocation_duration_seconds_count 1",
            "weft_allocation_duration_seconds_bucket{le=\"0.002\"} 1",
            "weft_allocation_duration_seconds_bucket{le=\"0.0005\"} 0",
            "# TYPE weft_handshake_failures counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_data_plane_counters_are_read_at_scrape_time() {
        let read = Arc::new(std::sync::Mutex::new(DataplaneCounts::default()));
        let source = Arc::clone(&read);
        let m = Metrics::with_dataplane(move || source.lock().unwrap().clone());
        *read.lock().unwrap() = DataplaneCounts {
            drops: vec![("replayed", 1), ("truncated", 0)],
            packets_in: 10,
            packets_out: 64,
            syscalls: vec![("tun_read", 1), ("udp_send", 2), ("udp_recv", 3)],
            sessions: 0,
            peers: vec![("up", 3), ("connecting", 0), ("down", 1)],
        };
        let text = m.encode();
        for line in [
            "weft_dataplane_packets_total{direction=\"out\"} 64",
            "weft_dataplane_packets_total{direction=\"in\"} 10",
            "weft_dataplane_syscalls_total{call=\"tun_read\"} 1",
            "weft_dataplane_syscalls_total{call=\"udp_send\"} 2",
            "weft_dataplane_syscalls_total{call=\"udp_recv\"} 3",
            "weft_dataplane_drops_total{reason=\"replayed\"} 1",
            "weft_dataplane_drops_total{reason=\"truncated\"} 0",
            "weft_dataplane_sessions 0",
            "weft_dataplane_peers{state=\"up\"} 3",
            "weft_dataplane_peers{state=\"connecting\"} 0",
            "weft_dataplane_peers{state=\"down\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn zeros_before_any_update() {
        let text = Metrics::new().encode();
        assert!(text.contains("weft_ipam_addresses{kind=\"free\"} 0"), "{text}");
        assert!(text.contains("weft_gossip_bytes_total{direction=\"in\"} 0"), "{text}");
        assert!(text.contains("weft_allocation_duration_seconds_count 0"), "{text}");
        assert!(
            text.contains("weft_ipam_state_writes_total{result=\"failed\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn ipam_writes_are_counted_by_result() {
        let m = Metrics::new();
        m.ipam_write(true);
        m.ipam_write(true);
        m.ipam_write(false);
        let text = m.encode();
        assert!(text.contains("weft_ipam_state_writes_total{result=\"ok\"} 2"), "{text}");
        assert!(
            text.contains("weft_ipam_state_writes_total{result=\"failed\"} 1"),
            "{text}"
        );
    }
}
