//! `weft-proxy`: the Docker API proxy on its own, beside a running router.
//! (`weft launch --proxy` runs the same proxy inside the router.)

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use weft_proxy::docker::DockerHost;
use weft_proxy::{Config, Proxy, server};

/// Docker API proxy: `docker run` containers join the Weft mesh.
///
/// Point the docker CLI at it with `eval $(weft env)`.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version)]
struct Args {
    /// The unix socket to listen on (mode 0660, group docker).
    #[arg(long, env = "WEFT_PROXY_SOCKET", value_name = "PATH", default_value = server::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also listen on TCP (127.0.0.1:12375 if no address is given). Loopback only, unless
    /// --dangerous-tcp-any-address.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = server::DEFAULT_TCP)]
    tcp: Option<SocketAddr>,
    /// Allow --tcp on an address other hosts can reach. Anyone who reaches it controls this host.
    #[arg(long)]
    dangerous_tcp_any_address: bool,
    /// The real Docker daemon: unix:///PATH or tcp://HOST:PORT.
    #[arg(
        long,
        env = "WEFT_DOCKER_HOST",
        value_name = "URL",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker_host: DockerHost,
    /// The weft router's API socket.
    #[arg(
        long,
        env = "WEFT_API_SOCKET",
        value_name = "PATH",
        default_value = "/run/weft/weft.sock"
    )]
    api_socket: PathBuf,
    /// Where to install weft-wait, the program mounted into containers that holds their first
    /// instruction until the mesh interface is up.
    #[arg(long, value_name = "PATH", default_value = "/var/lib/weft/weft-wait")]
    wait_binary: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let tcp = match args.tcp {
        Some(addr) => Some(
            server::check_tcp(addr, args.dangerous_tcp_any_address, "--dangerous-tcp-any-address")
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let config = Config {
        socket: args.socket,
        tcp,
        docker_host: args.docker_host,
        router_socket: args.api_socket,
        wait_binary: args.wait_binary,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        proxy
            .run(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            })
            .await?;
        Ok(())
    })
}
