//! `weft-proxy`: the Docker API proxy on its own, beside a running router.
//! (`weft launch --proxy` runs the same proxy inside the router.)

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use weft_proxy::Proxy;
use weft_proxy::flags::Args;

/// Docker API proxy: `docker run` containers join the Weft mesh.
///
/// Point the docker CLI at it with `eval $(weft env)`.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn main() -> ExitCode {
    let args = Cli::parse().args;
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
    let config = args.into_config()?;
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
