//! `weft`: the router daemon and its command line.
//!
//! Thin on purpose: parse the command line, set up logging, and hand typed
//! values to the library. The only place `anyhow` is used.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use weft_router::api;
use weft_router::config::{Cli, Command, LaunchArgs};
use weft_router::identity::Identity;
use weft_router::io::daemon::Daemon;
use weft_router::secret::ClusterSecret;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    if command.api_socket().is_some() {
        return client(command);
    }
    match command {
        Command::Launch(args) => launch(*args),
        Command::Secret => {
            println!("{}", ClusterSecret::generate());
            Ok(())
        }
        other => bail!("`{other:?}` is not handled yet"),
    }
}

fn launch(args: LaunchArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    // Loaded before anything is written, so a missing secret stops the launch early.
    let secret = ClusterSecret::load(&config.secret)?;
    let (identity, created) = Identity::load_or_create(&config.data_dir)
        .with_context(|| format!("cannot set up the router's identity in {}", config.data_dir.display()))?;
    info!(
        peer = %identity.name(),
        nickname = %config.nickname,
        ?created,
        data_dir = %config.data_dir.display(),
        "identity ready"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::bind(config, identity, &secret).await?;
        drop(secret);
        daemon.run(shutdown_signal()).await
    })?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(e) => {
            warn!(error = %e, "cannot watch for SIGTERM; stop the router with SIGINT");
            None
        }
    };
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot watch for SIGINT; stop the router with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = int => info!("SIGINT received"),
        () = term => info!("SIGTERM received"),
    }
}

/// Commands that talk to a running router over its API socket.
fn client(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(api::cli::run(command, &mut stdout))?;
    Ok(())
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`). The daemon gets
/// timestamps; one-shot commands get bare messages.
fn init_tracing(command: &Command) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if matches!(command, Command::Launch(_)) {
        builder.init();
    } else {
        builder.without_time().with_target(false).init();
    }
}
