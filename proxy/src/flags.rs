//! The proxy's command-line flags, in its two forms.
//!
//! - [`Args`]: `weft-proxy`, the proxy on its own beside a running router.
//! - [`LaunchFlags`]: the same settings as `weft launch --proxy ...`, which the
//!   router's launch flags include (`#[command(flatten)]`), so the proxy runs
//!   inside the router. Prefixed with `proxy-` where a bare name would be
//!   ambiguous among the router's own flags.
//!
//! Both end in the same [`Config`], checked by the same rules: the TCP
//! listener is loopback unless the operator says `dangerous`, and the Docker
//! host is a `unix://` or `tcp://` URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;

use crate::docker::DockerHost;
use crate::server::{self, Config};

/// The real Docker daemon when no flag or `WEFT_DOCKER_HOST` says otherwise.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The router's API socket `weft-proxy` talks to by default.
pub const DEFAULT_API_SOCKET: &str = "/run/weft/weft.sock";
/// Where `weft-proxy` installs `weft-wait` by default (`weft launch --proxy`
/// puts it in the router's data directory).
pub const DEFAULT_WAIT_BINARY: &str = "/var/lib/weft/weft-wait";
/// The name `weft launch --proxy` gives `weft-wait` in its data directory.
pub const WAIT_BINARY_NAME: &str = "weft-wait";

/// `weft-proxy`'s flags.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// The unix socket to listen on (mode 0660, group docker).
    #[arg(long, env = "WEFT_PROXY_SOCKET", value_name = "PATH", default_value = server::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also listen on TCP (127.0.0.1:12375 if no address is given). Loopback only, unless
    /// --dangerous-tcp-any-address.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = server::DEFAULT_TCP)]
    pub tcp: Option<String>,
    /// Allow --tcp on an address other hosts can reach. Anyone who reaches it controls this host.
    #[arg(long)]
    pub dangerous_tcp_any_address: bool,
    /// The real Docker daemon: unix:///PATH or tcp://HOST:PORT.
    #[arg(long, env = "WEFT_DOCKER_HOST", value_name = "URL", default_value = DEFAULT_DOCKER_HOST)]
    pub docker_host: String,
    /// The weft router's API socket.
    #[arg(long, env = "WEFT_API_SOCKET", value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Where to install weft-wait, the program mounted into containers that holds their first
    /// instruction until the mesh interface is up.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_WAIT_BINARY)]
    pub wait_binary: PathBuf,
}

impl Args {
    /// The checked configuration.
    ///
    /// # Errors
    /// [`FlagError`], naming the flag and how to fix it.
    pub fn into_config(self) -> Result<Config, FlagError> {
        Ok(Config {
            socket: self.socket,
            tcp: tcp(
                self.tcp,
                "--tcp",
                self.dangerous_tcp_any_address,
                "--dangerous-tcp-any-address",
            )?,
            docker_host: docker_host(&self.docker_host)?,
            router_socket: self.api_socket,
            wait_binary: self.wait_binary,
        })
    }
}

/// The proxy's flags as `weft launch` takes them.
#[derive(Debug, Clone, ClapArgs)]
pub struct LaunchFlags {
    /// Also run the Docker API proxy: containers made with `docker run` through it join the mesh
    /// (point the docker CLI at it with `eval $(weft env)`).
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: the unix socket it listens on (mode 0660, group docker).
    #[arg(long, env = "WEFT_PROXY_SOCKET", value_name = "PATH", default_value = server::DEFAULT_SOCKET, requires = "proxy")]
    pub proxy_socket: PathBuf,
    /// With --proxy: also listen on TCP (127.0.0.1:12375 if no address is given). Loopback only,
    /// unless --dangerous-proxy-tcp-any-address.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = server::DEFAULT_TCP, requires = "proxy")]
    pub proxy_tcp: Option<String>,
    /// With --proxy-tcp: allow an address other hosts can reach. Anyone who reaches it controls
    /// this host (there is no TLS).
    #[arg(long, requires = "proxy_tcp")]
    pub dangerous_proxy_tcp_any_address: bool,
    /// With --proxy: the real Docker daemon, unix:///PATH or tcp://HOST:PORT.
    #[arg(
        long,
        env = "WEFT_DOCKER_HOST",
        value_name = "URL",
        default_value = DEFAULT_DOCKER_HOST,
        requires = "proxy"
    )]
    pub docker_host: String,
}

impl LaunchFlags {
    /// The proxy's configuration if `--proxy` was given: it talks to the
    /// router at `api_socket` and installs `weft-wait` in `data_dir`.
    ///
    /// # Errors
    /// [`FlagError`], naming the flag and how to fix it.
    pub fn into_config(self, api_socket: &Path, data_dir: &Path) -> Result<Option<Config>, FlagError> {
        if !self.proxy {
            return Ok(None);
        }
        Ok(Some(Config {
            socket: self.proxy_socket,
            tcp: tcp(
                self.proxy_tcp,
                "--proxy-tcp",
                self.dangerous_proxy_tcp_any_address,
                "--dangerous-proxy-tcp-any-address",
            )?,
            docker_host: docker_host(&self.docker_host)?,
            router_socket: api_socket.to_owned(),
            wait_binary: data_dir.join(WAIT_BINARY_NAME),
        }))
    }
}

/// A proxy flag that cannot be used as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The TCP listening address is not an address, or not allowed.
    #[error("{flag} {given:?}: {reason}")]
    Tcp {
        /// The flag (`--tcp`, `--proxy-tcp`).
        flag: &'static str,
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--docker-host` is not a Docker host URL.
    #[error("--docker-host {reason}")]
    DockerHost {
        /// What is wrong, and how to write it.
        reason: String,
    },
}

fn tcp(
    given: Option<String>,
    flag: &'static str,
    dangerous: bool,
    dangerous_flag: &str,
) -> Result<Option<SocketAddr>, FlagError> {
    let Some(given) = given else {
        return Ok(None);
    };
    let refuse = |reason: String| FlagError::Tcp {
        flag,
        given: given.clone(),
        reason,
    };
    let addr: SocketAddr = given
        .trim()
        .parse()
        .map_err(|_| refuse(format!("not an IP address and port, like {}", server::DEFAULT_TCP)))?;
    server::check_tcp(addr, dangerous, dangerous_flag)
        .map(Some)
        .map_err(refuse)
}

fn docker_host(given: &str) -> Result<DockerHost, FlagError> {
    given.trim().parse().map_err(|reason| FlagError::DockerHost { reason })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Standalone {
        #[command(flatten)]
        args: Args,
    }

    #[derive(Debug, Parser)]
    struct Launch {
        #[command(flatten)]
        flags: LaunchFlags,
    }

    fn standalone(argv: &[&str]) -> Result<Config, FlagError> {
        let argv = std::iter::once("weft-proxy").chain(argv.iter().copied());
        Standalone::try_parse_from(argv).unwrap().args.into_config()
    }

    fn launch(argv: &[&str]) -> Result<Option<Config>, FlagError> {
        let argv = std::iter::once("weft").chain(argv.iter().copied());
        Launch::try_parse_from(argv)
            .unwrap()
            .flags
            .into_config(Path::new("/run/api.sock"), Path::new("/d"))
    }

    #[test]
    fn standalone_defaults_and_checks() {
        let c = standalone(&[]).unwrap();
        assert_eq!(c.socket, Path::new(server::DEFAULT_SOCKET));
        assert_eq!(c.tcp, None);
        assert_eq!(c.docker_host.to_string(), DEFAULT_DOCKER_HOST);
        assert_eq!(c.router_socket, Path::new(DEFAULT_API_SOCKET));
        assert_eq!(c.wait_binary, Path::new(DEFAULT_WAIT_BINARY));
        let c = standalone(&["--tcp"]).unwrap();
        assert_eq!(c.tcp, Some(server::DEFAULT_TCP.parse().unwrap()));
        let refused = standalone(&["--tcp", "0.0.0.0:2375"]).unwrap_err().to_string();
        assert!(
            refused.starts_with("--tcp \"0.0.0.0:2375\": refusing") && refused.contains("--dangerous-tcp-any-address"),
            "{refused}"
        );
        let c = standalone(&["--tcp", "0.0.0.0:2375", "--dangerous-tcp-any-address"]).unwrap();
        assert_eq!(c.tcp, Some("0.0.0.0:2375".parse().unwrap()));
        let bad = standalone(&["--docker-host", "docker.sock"]).unwrap_err().to_string();
        assert!(
            bad.starts_with("--docker-host ") && bad.contains("unix:///PATH"),
            "{bad}"
        );
    }

    #[test]
    fn launch_flags_need_proxy() {
        assert_eq!(launch(&[]).unwrap(), None);
        let c = launch(&["--proxy"]).unwrap().unwrap();
        assert_eq!(c.router_socket, Path::new("/run/api.sock"));
        assert_eq!(c.wait_binary, Path::new("/d/weft-wait"));
        let bad = launch(&["--proxy", "--proxy-tcp", "nope"]).unwrap_err().to_string();
        assert!(bad.starts_with("--proxy-tcp \"nope\": not an IP address"), "{bad}");
        let argv = ["weft", "--docker-host", "tcp://h:1"];
        assert!(Launch::try_parse_from(argv).is_err(), "--docker-host without --proxy");
    }
}
