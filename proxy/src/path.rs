//! Which Docker Engine API call a request is, for any API version.
//!
//! Paths come versioned (`/v1.41/containers/create`) or not
//! (`/containers/create`, the daemon's own version). Only the calls the
//! proxy acts on are told apart; everything else is [`Call::Other`] and is
//! forwarded untouched.

/// An API version, `v1.41` as `(1, 41)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u16, pub u16);

impl ApiVersion {
    /// The first version with `HostConfig.Mounts` (Docker 1.13).
    pub const MOUNTS: Self = Self(1, 25);
}

/// A request the proxy acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call<'a> {
    /// `POST /containers/create`.
    Create,
    /// `POST /containers/{id}/start`.
    Start(&'a str),
    /// `POST /containers/{id}/restart`.
    Restart(&'a str),
    /// Anything else.
    Other,
}

/// A request's API version (`None` when the path has none: the daemon's
/// current one) and which call it is.
pub fn classify<'a>(method: &str, path: &'a str) -> (Option<ApiVersion>, Call<'a>) {
    let (version, rest) = split_version(path);
    if method != "POST" {
        return (version, Call::Other);
    }
    let call = match rest.strip_prefix("/containers/").map(|r| r.trim_end_matches('/')) {
        Some("create") => Call::Create,
        Some(r) => match r.split_once('/') {
            Some((id, "start")) if valid_ref(id) => Call::Start(id),
            Some((id, "restart")) if valid_ref(id) => Call::Restart(id),
            _ => Call::Other,
        },
        None => Call::Other,
    };
    (version, call)
}

fn split_version(path: &str) -> (Option<ApiVersion>, &str) {
    let Some(rest) = path.strip_prefix("/v") else {
        return (None, path);
    };
    let (v, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return (None, path),
    };
    let parsed = v
        .split_once('.')
        .and_then(|(major, minor)| Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?)));
    match parsed {
        Some(version) => (Some(version), tail),
        None => (None, path),
    }
}

/// A container name or id as it may appear in a path: no empty part, no
/// further path segment.
fn valid_ref(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_calls() {
        assert_eq!(
            classify("POST", "/v1.41/containers/create"),
            (Some(ApiVersion(1, 41)), Call::Create)
        );
        assert_eq!(classify("POST", "/containers/create"), (None, Call::Create));
        assert_eq!(
            classify("POST", "/v1.24/containers/abc123/start"),
            (Some(ApiVersion(1, 24)), Call::Start("abc123"))
        );
        assert_eq!(
            classify("POST", "/containers/web/restart"),
            (None, Call::Restart("web"))
        );
        assert_eq!(classify("POST", "/containers/web/start/"), (None, Call::Start("web")));
    }

    #[test]
    fn everything_else_is_other() {
        assert_eq!(classify("GET", "/v1.41/containers/create").1, Call::Other);
        assert_eq!(classify("POST", "/v1.41/containers/abc/stop").1, Call::Other);
        assert_eq!(classify("POST", "/v1.41/containers/abc/attach").1, Call::Other);
        assert_eq!(classify("POST", "/v1.41/containers//start").1, Call::Other);
        assert_eq!(classify("POST", "/v1.41/containers/a/b/start").1, Call::Other);
        assert_eq!(classify("POST", "/v1.41/exec/abc/start").1, Call::Other);
        assert_eq!(classify("HEAD", "/_ping"), (None, Call::Other));
        assert_eq!(classify("POST", "/vx.y/containers/create"), (None, Call::Other));
        assert_eq!(classify("POST", "/v1.41"), (None, Call::Other));
    }

    #[test]
    fn mounts_version() {
        assert!(ApiVersion(1, 41) >= ApiVersion::MOUNTS);
        assert!(ApiVersion(1, 24) < ApiVersion::MOUNTS);
        assert!(ApiVersion(2, 0) >= ApiVersion::MOUNTS);
    }
}
