//! `weft`: the router daemon and its command line.
//!
//! Thin on purpose: parse the command line, set up logging, and hand typed
//! values to the library. The only place `anyhow` is used.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use weft_router::api;
use weft_router::config::{Cli, Command, LaunchArgs};
use weft_router::identity::Identity;
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
    // Loaded now so a missing secret stops the launch before anything is
    // written; the control plane will take it.
    let _secret = ClusterSecret::load(&config.secret)?;
    let (identity, created) = Identity::load_or_create(&config.data_dir)
        .with_context(|| format!("cannot set up the router's identity in {}", config.data_dir.display()))?;
    info!(
        peer = %identity.name(),
        nickname = %config.nickname,
        ?created,
        data_dir = %config.data_dir.display(),
        "identity ready"
    );
    bail!("the control plane is not implemented yet (it lands next); stopping")
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
