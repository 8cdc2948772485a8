//! `weft-probe`: the traffic the end-to-end tests send and receive inside pod and host namespaces.
//!
//! busybox has ping and a TCP-only `nc`; the data-plane tests also need UDP echo, a steady UDP stream whose
//! gaps can be measured, datagrams sent with the Don't Fragment bit forced on (`IP_PMTUDISC_DO`), and raw
//! datagrams sent from a file. Each subcommand does one of these and reports on stdout, one flushed line per
//! event, so a test can read what happened as it happens:
//!
//! ```text
//! weft-probe udp-echo PORT                    ready | recv LEN FROM TEXT      (echoes every datagram)
//! weft-probe tcp-echo PORT                    ready | conn FROM LEN           (echoes every connection)
//! weft-probe udp-ask [OPTS] DEST TEXT         ok attempts=N                   (one datagram, waits for its echo)
//!     --from IP  --size N  --tries N  --timeout-ms N  --dont-fragment
//! weft-probe tcp-ask [--size N] DEST TEXT     ok                              (sends, half-closes, checks the echo)
//! weft-probe udp-stream [--interval-ms N] DEST TAG   reply SEQ                (until killed)
//! weft-probe send DEST FILE                   sent N                          (one datagram per hex line of FILE)
//! ```
//!
//! `TEXT` is the payload, repeated to `--size` bytes when that is given. Exit status: 0 on success, 1 on a
//! failure (message on stderr), 2 on bad usage, and 3 when `--dont-fragment` made the kernel refuse the send
//! with `EMSGSIZE` (it prints `emsgsize`), which is what a datagram larger than the path MTU must get.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage("no subcommand");
    };
    let result = match command.as_str() {
        "udp-echo" => port(rest).and_then(udp_echo),
        "tcp-echo" => port(rest).and_then(tcp_echo),
        "udp-ask" => Options::parse(rest).and_then(|o| udp_ask(&o)),
        "tcp-ask" => Options::parse(rest).and_then(|o| tcp_ask(&o)),
        "udp-stream" => Options::parse(rest).and_then(|o| udp_stream(&o)),
        "send" => Options::parse(rest).and_then(|o| send_file(&o)),
        other => return usage(&format!("unknown subcommand {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => usage(&msg),
        Err(Failure::TooBig) => {
            say("emsgsize");
            ExitCode::from(3)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("weft-probe {command}: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    /// `EMSGSIZE` on a send with `IP_PMTUDISC_DO`.
    TooBig,
    Io(String),
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |err| Failure::Io(format!("{what}: {err}"))
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("weft-probe: {msg}; see the module doc of tests/src/bin/weft-probe.rs");
    ExitCode::from(2)
}

/// Prints one line and flushes it, so a reader on a pipe sees it at once.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    // A test that stopped reading has no use for the line; the probe keeps serving.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The options of the client subcommands, and their two positional arguments.
struct Options {
    dest: SocketAddr,
    /// TEXT, TAG or FILE.
    arg: String,
    from: Option<Ipv4Addr>,
    size: Option<usize>,
    tries: u32,
    timeout: Duration,
    interval: Duration,
    dont_fragment: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Failure> {
        let mut o = Self {
            dest: SocketAddr::from(([0, 0, 0, 0], 0)),
            arg: String::new(),
            from: None,
            size: None,
            tries: 1,
            timeout: Duration::from_secs(2),
            interval: Duration::from_millis(50),
            dont_fragment: false,
        };
        let mut positional = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
                    .cloned()
            };
            match arg.as_str() {
                "--from" => o.from = Some(parsed("--from", &value("--from")?)?),
                "--size" => o.size = Some(parsed("--size", &value("--size")?)?),
                "--tries" => o.tries = parsed("--tries", &value("--tries")?)?,
                "--timeout-ms" => o.timeout = Duration::from_millis(parsed("--timeout-ms", &value("--timeout-ms")?)?),
                "--interval-ms" => {
                    o.interval = Duration::from_millis(parsed("--interval-ms", &value("--interval-ms")?)?);
                }
                "--dont-fragment" => o.dont_fragment = true,
                _ if arg.starts_with("--") => return Err(Failure::Usage(format!("unknown option {arg}"))),
                _ => positional.push(arg.clone()),
            }
        }
        let [dest, arg] = <[String; 2]>::try_from(positional)
            .map_err(|p| Failure::Usage(format!("want DEST and one more argument, got {p:?}")))?;
        o.dest = parsed("DEST", &dest)?;
        o.arg = arg;
        Ok(o)
    }

    /// The payload: TEXT, repeated to `--size` bytes if given.
    fn payload(&self) -> Vec<u8> {
        match self.size {
            None => self.arg.as_bytes().to_vec(),
            Some(size) => self.arg.bytes().cycle().take(size).collect(),
        }
    }

    /// A UDP socket bound to `--from` (or any address), with `IP_PMTUDISC_DO` if asked.
    fn udp_socket(&self) -> Result<UdpSocket, Failure> {
        let from = self.from.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let socket = UdpSocket::bind((from, 0)).map_err(io_err("bind"))?;
        if self.dont_fragment {
            set_pmtudisc_do(&socket).map_err(io_err("setsockopt IP_MTU_DISCOVER"))?;
        }
        Ok(socket)
    }
}

fn parsed<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, Failure> {
    value
        .parse()
        .map_err(|_| Failure::Usage(format!("bad {what} {value:?}")))
}

fn port(args: &[String]) -> Result<u16, Failure> {
    match args {
        [port] => parsed("PORT", port),
        _ => Err(Failure::Usage(format!("want PORT, got {args:?}"))),
    }
}

fn udp_echo(port: u16) -> Result<(), Failure> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(io_err("bind"))?;
    say("ready");
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket.recv_from(&mut buf).map_err(io_err("recv"))?;
        let data = &buf[..len];
        say(&format!("recv {len} {from} {}", printable(data)));
        socket.send_to(data, from).map_err(io_err("send"))?;
    }
}

fn tcp_echo(port: u16) -> Result<(), Failure> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(io_err("bind"))?;
    say("ready");
    loop {
        let (stream, from) = listener.accept().map_err(io_err("accept"))?;
        thread::spawn(move || {
            let echoed = stream.try_clone().and_then(|mut writer| {
                let n = io::copy(&mut &stream, &mut writer)?;
                writer.shutdown(Shutdown::Write)?;
                Ok(n)
            });
            match echoed {
                Ok(n) => say(&format!("conn {from} {n}")),
                Err(err) => say(&format!("error {from} {err}")),
            }
        });
    }
}

fn udp_ask(o: &Options) -> Result<(), Failure> {
    let socket = o.udp_socket()?;
    socket.set_read_timeout(Some(o.timeout)).map_err(io_err("timeout"))?;
    let payload = o.payload();
    let mut buf = vec![0u8; 65_536];
    for attempt in 1..=o.tries.max(1) {
        match socket.send_to(&payload, o.dest) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(EMSGSIZE) => return Err(Failure::TooBig),
            Err(err) => return Err(Failure::Io(format!("send to {}: {err}", o.dest))),
        }
        let deadline = Instant::now() + o.timeout;
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == o.dest && buf[..len] == payload[..] => {
                    say(&format!("ok attempts={attempt}"));
                    return Ok(());
                }
                // Something else (a late echo of an earlier attempt has the same bytes, so it counts above).
                Ok(_) => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(err) => return Err(Failure::Io(format!("recv: {err}"))),
            }
        }
    }
    Err(Failure::Io(format!(
        "no echo of {} bytes from {} after {} tries of {:?}",
        payload.len(),
        o.dest,
        o.tries,
        o.timeout
    )))
}

fn tcp_ask(o: &Options) -> Result<(), Failure> {
    let stream = TcpStream::connect_timeout(&o.dest, o.timeout).map_err(io_err("connect"))?;
    stream.set_read_timeout(Some(o.timeout)).map_err(io_err("timeout"))?;
    let payload = o.payload();
    let mut writer = stream.try_clone().map_err(io_err("clone"))?;
    // Written from another thread: the echo comes back while we still send, and both directions must drain.
    let sent = payload.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echo = Vec::with_capacity(payload.len());
    (&stream).read_to_end(&mut echo).map_err(io_err("read"))?;
    sender
        .join()
        .map_err(|_| Failure::Io("the sending thread panicked".into()))?
        .map_err(io_err("write"))?;
    if echo != payload {
        return Err(Failure::Io(format!(
            "the echo differs: sent {} bytes, got {}",
            payload.len(),
            echo.len()
        )));
    }
    say("ok");
    Ok(())
}

fn udp_stream(o: &Options) -> Result<(), Failure> {
    let socket = o.udp_socket()?;
    let mut buf = vec![0u8; 2048];
    let mut next_send = Instant::now();
    for seq in 0u64.. {
        // A host without a route to the destination (its router is down) refuses sends for a while: report it
        // and keep going, the stream is for measuring such gaps.
        if let Err(err) = socket.send_to(format!("{} {seq}", o.arg).as_bytes(), o.dest) {
            say(&format!("send-error {seq} {err}"));
        }
        next_send += o.interval;
        loop {
            let left = next_send.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left)).map_err(io_err("timeout"))?;
            match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == o.dest => {
                    let text = String::from_utf8_lossy(&buf[..len]);
                    if let Some(seq) = text.strip_prefix(&o.arg).map(str::trim) {
                        say(&format!("reply {seq}"));
                    }
                }
                Ok(_) => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                // ICMP errors (port or host unreachable) surface as errors on a later recv.
                Err(err) => say(&format!("recv-error {err}")),
            }
        }
    }
    Ok(())
}

fn send_file(o: &Options) -> Result<(), Failure> {
    let socket = o.udp_socket()?;
    let file = std::fs::File::open(&o.arg).map_err(io_err("open"))?;
    let mut sent = 0;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err("read"))?;
        let datagram = hex(line.trim()).ok_or_else(|| Failure::Io(format!("not hex: {line:?}")))?;
        socket.send_to(&datagram, o.dest).map_err(io_err("send"))?;
        sent += 1;
    }
    say(&format!("sent {sent}"));
    Ok(())
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The first bytes of a payload as text, anything but printable ASCII and spaces shown as `.`.
fn printable(data: &[u8]) -> String {
    data.iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

/// `IP_MTU_DISCOVER = IP_PMTUDISC_DO`: the Don't Fragment bit on every datagram, and `EMSGSIZE` from `send`
/// for a datagram larger than the path MTU instead of fragmenting it. Neither std, socket2 nor nix offers
/// this option, so it is the one `setsockopt` called directly.
#[expect(
    unsafe_code,
    reason = "setsockopt(IP_MTU_DISCOVER) has no safe wrapper in std, socket2 or nix"
)]
fn set_pmtudisc_do(socket: &UdpSocket) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("an int's size fits socklen_t");
    // SAFETY: the fd is open for the lifetime of `socket`, which is borrowed across the call; the option value
    // points to a live c_int and `len` is its size, as IP_MTU_DISCOVER expects (ip(7)).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const EMSGSIZE: i32 = libc::EMSGSIZE;
