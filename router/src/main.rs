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
use weft_router::config::{Cli, Command, InstallCniArgs, LaunchArgs, LaunchConfig};
use weft_router::identity::Identity;
use weft_router::io::daemon::Daemon;
use weft_router::secret::ClusterSecret;
#[cfg(feature = "kube")]
use weft_router::secret::SecretError;

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
        Command::InstallCni(args) => install_cni(&args),
        Command::Env(args) => {
            let var = |name| std::env::var(name).ok();
            let commands = weft_router::docker_env::commands(
                &args.proxy_socket,
                args.restore,
                var("DOCKER_HOST").as_deref(),
                var("ORIG_DOCKER_HOST").as_deref(),
            )?;
            println!("{commands}");
            Ok(())
        }
        other => bail!("`{other:?}` is not handled yet"),
    }
}

fn launch(args: LaunchArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(launch_async(config))
}

async fn launch_async(#[allow(unused_mut)] mut config: LaunchConfig) -> anyhow::Result<()> {
    #[cfg(feature = "kube")]
    let kube = match &config.kube {
        Some(_) => Some(kube_mode::prepare(&mut config).await?),
        None => None,
    };
    // Loaded before anything is written, so a missing secret stops the launch early.
    #[cfg(feature = "kube")]
    let secret = match (ClusterSecret::load(&config.secret), &kube) {
        (Err(SecretError::Missing), Some(client)) => kube_mode::secret(&config, client.clone()).await?,
        (other, _) => other?,
    };
    #[cfg(not(feature = "kube"))]
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
    let daemon = Daemon::bind(config.clone(), identity, created, &secret).await?;
    drop(secret);
    #[cfg(feature = "proxy")]
    let proxy = proxy::start(config.proxy.clone()).await?;
    #[cfg(feature = "kube")]
    let discovery = kube.map(|client| kube_mode::spawn_discovery(client, &config));
    let outcome = daemon.run(shutdown_signal()).await;
    #[cfg(feature = "proxy")]
    proxy::stop(proxy).await;
    #[cfg(feature = "kube")]
    if let Some(task) = discovery {
        task.abort();
    }
    outcome?;
    Ok(())
}

/// `weft install-cni`: the plugins come from the directory `weft` itself is in.
fn install_cni(args: &InstallCniArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the weft binary's own path")?;
    let dir = exe.parent().context("the weft binary's path has no directory")?;
    let done = weft_router::install_cni::install(dir, &args.bin_dir, &args.conf_dir)?;
    for plugin in &done.plugins {
        info!(path = %plugin.display(), "installed CNI plugin");
    }
    info!(path = %done.conflist.display(), "wrote CNI network configuration");
    Ok(())
}

/// `weft launch --kube`: the Kubernetes client, the Secret, and Node discovery.
#[cfg(feature = "kube")]
mod kube_mode {
    use std::num::NonZeroUsize;

    use anyhow::Context;
    use tracing::info;
    use weft_api::client::Client;
    use weft_router::config::{IpallocInit, LaunchConfig};
    use weft_router::core::nodes;
    use weft_router::io::kube::{self, START_TIMEOUT};
    use weft_router::secret::ClusterSecret;

    /// Connects to the API; without --ipalloc-init or --init-peer-count, the
    /// routers that start the ring are as many as the Node objects.
    pub(super) async fn prepare(config: &mut LaunchConfig) -> anyhow::Result<kube::KubeClient> {
        let client = kube::client().await?;
        let Some(k) = &config.kube else { return Ok(client) };
        if k.init_from_nodes {
            let nodes = tokio::time::timeout(START_TIMEOUT, kube::node_names(client.clone()))
                .await
                .context("listing the nodes took too long")??;
            let peers = NonZeroUsize::new(nodes.len()).unwrap_or(NonZeroUsize::MIN);
            info!(
                nodes = peers,
                "the address ring starts when the routers of all nodes have met"
            );
            config.ipalloc_init = IpallocInit::Consensus { peers };
        }
        Ok(client)
    }

    /// The cluster secret from the Secret, created if absent.
    pub(super) async fn secret(config: &LaunchConfig, client: kube::KubeClient) -> anyhow::Result<ClusterSecret> {
        let k = config.kube.as_ref().context("not in Kubernetes mode")?;
        let namespace = k
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let (secret, origin) =
            tokio::time::timeout(START_TIMEOUT, kube::cluster_secret(client, &namespace, &k.secret_name))
                .await
                .context("reading the cluster Secret took too long")??;
        info!(%origin, namespace, name = %k.secret_name, "cluster secret from the Secret");
        Ok(secret)
    }

    /// Starts Node discovery, acting through the router's own API socket.
    pub(super) fn spawn_discovery(client: kube::KubeClient, config: &LaunchConfig) -> tokio::task::AbortHandle {
        let node = config.kube.as_ref().map(|k| k.node_name.clone()).unwrap_or_default();
        let mut discovery = nodes::Config::new(node);
        discovery.port = config.listen.port();
        let router = Client::new(config.api_socket.clone());
        tokio::spawn(kube::run_discovery(client, discovery, router, std::future::pending())).abort_handle()
    }
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

/// The Docker API proxy inside the router (`weft launch --proxy`).
#[cfg(feature = "proxy")]
mod proxy {
    use anyhow::Context as _;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tracing::warn;

    /// A running proxy and the way to stop it.
    pub(crate) struct Running {
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), weft_proxy::StartError>>,
    }

    /// Binds and starts the proxy, if configured; it serves until [`stop`].
    pub(crate) async fn start(config: Option<weft_proxy::Config>) -> anyhow::Result<Option<Running>> {
        let Some(config) = config else {
            return Ok(None);
        };
        let proxy = weft_proxy::Proxy::bind(config)
            .await
            .context("cannot start the Docker API proxy (--proxy)")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        Ok(Some(Running { stop, task }))
    }

    /// Stops the proxy, which removes its socket, and waits for it.
    pub(crate) async fn stop(running: Option<Running>) {
        let Some(Running { stop, task }) = running else {
            return;
        };
        let _ = stop.send(());
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the Docker API proxy failed"),
            Err(e) => warn!(error = %e, "the Docker API proxy's task failed"),
        }
    }
}
