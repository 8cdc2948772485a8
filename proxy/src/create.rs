//! What the proxy does with a `containers/create` request.
//!
//! A container that is to join the mesh must not run its first instruction
//! before its interface exists. The proxy cannot hook into the daemon
//! between "network namespace made" and "process started", so, as Weave's
//! proxy did, it makes the container start under a program of its own:
//! `weft-wait` ([`crate::wait`]), bind-mounted read-only at
//! [`wait::CONTAINER_PATH`], which waits for `ethwe` and then `exec`s the
//! container's real command line. Being static, it works in images with no
//! shell and no libc.
//!
//! The command line the container would have run is worked out exactly as
//! the daemon does it (its `merge` of image and request config):
//!
//! - if the request sets no entrypoint (`null`) or an empty one (`[]`, what
//!   `--entrypoint ""` sends) and no command, the image's command is used;
//! - the image's entrypoint is used only when the request's is `null`.
//!
//! The result is `Entrypoint = [weft-wait, "--", entrypoint...]` and
//! `Cmd = command`. Everything else in the body is kept as it was, unknown
//! fields included.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::cidr::{self, CidrError, Entry};
use crate::path::ApiVersion;
use crate::wait;

/// A container's entrypoint and command, from an image or a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    /// `Entrypoint`: `None` when not set at all.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`: `None` when not set at all.
    pub cmd: Option<Vec<String>>,
}

impl CommandLine {
    /// The `Entrypoint` and `Cmd` of a JSON object (a request's body, or an
    /// image's `Config`). Docker accepts a string for either (one element).
    pub fn of(config: &Value) -> Self {
        Self {
            entrypoint: str_slice(config.get("Entrypoint")),
            cmd: str_slice(config.get("Cmd")),
        }
    }
}

/// What to do with a create request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Forward the body unchanged: not JSON, host or shared network,
    /// `WEFT_CIDR=none`, or nothing to run (the daemon says so itself).
    Forward,
    /// The image's entrypoint and command are needed to decide; ask the
    /// daemon for image `image`, then call [`plan`] again with them.
    NeedImage {
        /// The `Image` field of the request.
        image: String,
    },
    /// Forward this body instead: the container joins the mesh with these
    /// addresses when it starts.
    Attach {
        /// The rewritten body.
        body: Value,
        /// What `WEFT_CIDR` asks for.
        entries: Vec<Entry>,
    },
}

/// Decides what to do with `body`, a create request's JSON. `image` is the
/// image's config once [`Plan::NeedImage`] asked for it (`None` before, and
/// when the daemon does not have the image: then the request is forwarded
/// as it is, the daemon answers 404 and the CLI pulls and tries again).
///
/// # Errors
/// A `WEFT_CIDR` that does not parse.
pub fn plan(
    body: &Value,
    image: Option<&CommandLine>,
    api: Option<ApiVersion>,
    wait_binary: &Path,
) -> Result<Plan, CidrError> {
    let Some(obj) = body.as_object() else {
        return Ok(Plan::Forward);
    };
    let mode = obj
        .get("HostConfig")
        .and_then(|h| h.get("NetworkMode"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if mode == "host" || mode.starts_with("container:") {
        return Ok(Plan::Forward);
    }
    let env = obj.get("Env").and_then(Value::as_array);
    let env = env.into_iter().flatten().filter_map(Value::as_str);
    let Some(entries) = cidr::from_env(env)? else {
        return Ok(Plan::Forward);
    };
    let request = CommandLine::of(body);
    let needs_image = request.entrypoint.as_ref().is_none_or(Vec::is_empty);
    let image = match (needs_image, image) {
        (false, _) => None,
        (true, Some(image)) => Some(image),
        (true, None) => {
            return Ok(match obj.get("Image").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => Plan::NeedImage { image: name.to_owned() },
                _ => Plan::Forward,
            });
        }
    };
    let (entrypoint, cmd) = merge(request, image);
    if entrypoint.is_empty() && cmd.is_empty() {
        return Ok(Plan::Forward);
    }
    let mut body = body.clone();
    let obj = body.as_object_mut().expect("checked to be an object above");
    let mut wrapped = vec![wait::CONTAINER_PATH.to_owned(), "--".to_owned()];
    wrapped.extend(entrypoint);
    obj.insert("Entrypoint".into(), json!(wrapped));
    obj.insert("Cmd".into(), json!(cmd));
    add_mount(obj, api, wait_binary);
    Ok(Plan::Attach { body, entries })
}

/// Whether a container's `Config.Entrypoint` is one [`plan`] wrapped: the
/// proxy attaches exactly those.
pub fn is_wrapped(config: &Value) -> bool {
    CommandLine::of(config)
        .entrypoint
        .is_some_and(|e| e.first().map(String::as_str) == Some(wait::CONTAINER_PATH))
}

/// The daemon's merge of request and image (moby `daemon/commit.go`).
fn merge(request: CommandLine, image: Option<&CommandLine>) -> (Vec<String>, Vec<String>) {
    let mut entrypoint = request.entrypoint;
    let mut cmd = request.cmd;
    if entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if cmd.as_ref().is_none_or(Vec::is_empty) {
            cmd = image.and_then(|i| i.cmd.clone());
        }
        if entrypoint.is_none() {
            entrypoint = image.and_then(|i| i.entrypoint.clone());
        }
    }
    (entrypoint.unwrap_or_default(), cmd.unwrap_or_default())
}

/// Mounts `wait_binary` read-only at [`wait::CONTAINER_PATH`]: in `Mounts`
/// (an error if the source is missing) where the API has it, else in `Binds`.
fn add_mount(obj: &mut Map<String, Value>, api: Option<ApiVersion>, wait_binary: &Path) {
    let host = obj.entry("HostConfig").or_insert_with(|| json!({}));
    if !host.is_object() {
        *host = json!({});
    }
    let host = host.as_object_mut().expect("made an object just above");
    let source = wait_binary.to_string_lossy();
    let (key, item) = if api.is_none_or(|v| v >= ApiVersion::MOUNTS) {
        let mount = json!({"Type": "bind", "Source": source, "Target": wait::CONTAINER_PATH, "ReadOnly": true});
        ("Mounts", mount)
    } else {
        ("Binds", json!(format!("{source}:{}:ro", wait::CONTAINER_PATH)))
    };
    match host.get_mut(key) {
        Some(Value::Array(list)) => list.push(item),
        _ => {
            host.insert(key.into(), json!([item]));
        }
    }
}

/// A Docker `StrSlice`: `null`/absent is `None`, a string is one element.
fn str_slice(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const WAIT: &str = "/var/lib/weft/weft-wait";

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> CommandLine {
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
        CommandLine {
            entrypoint: entrypoint.map(v),
            cmd: cmd.map(v),
        }
    }

    fn run(body: Value, img: Option<&CommandLine>) -> Plan {
        plan(&body, img, Some(ApiVersion(1, 41)), Path::new(WAIT)).unwrap()
    }

    fn attached(plan: Plan) -> (Value, Vec<Entry>) {
        match plan {
            Plan::Attach { body, entries } => (body, entries),
            other => panic!("expected Attach, got {other:?}"),
        }
    }

    #[test]
    fn image_command_is_wrapped() {
        let body = json!({"Image": "busybox", "Cmd": null, "Entrypoint": null, "Labels": {"a": "b"}});
        assert_eq!(
            run(body.clone(), None),
            Plan::NeedImage {
                image: "busybox".into()
            }
        );
        let img = image(None, Some(&["/bin/sh"]));
        let (out, entries) = attached(run(body, Some(&img)));
        assert_eq!(out["Entrypoint"], json!(["/.weft/wait", "--"]));
        assert_eq!(out["Cmd"], json!(["/bin/sh"]));
        assert_eq!(out["Labels"], json!({"a": "b"}), "other fields are kept");
        assert_eq!(
            out["HostConfig"]["Mounts"],
            json!([{"Type": "bind", "Source": WAIT, "Target": "/.weft/wait", "ReadOnly": true}])
        );
        assert_eq!(entries, vec![Entry::Auto]);
        assert!(is_wrapped(&out));
    }

    #[test]
    fn request_command_replaces_image_command() {
        let img = image(Some(&["/entry"]), Some(&["default"]));
        let (out, _) = attached(run(json!({"Image": "x", "Cmd": ["ip", "addr"]}), Some(&img)));
        assert_eq!(out["Entrypoint"], json!(["/.weft/wait", "--", "/entry"]));
        assert_eq!(out["Cmd"], json!(["ip", "addr"]));
    }

    #[test]
    fn request_entrypoint_drops_image_command_and_needs_no_image() {
        let body = json!({"Image": "x", "Entrypoint": ["/bin/busybox"], "Cmd": null});
        let (out, _) = attached(run(body, None));
        assert_eq!(out["Entrypoint"], json!(["/.weft/wait", "--", "/bin/busybox"]));
        assert_eq!(out["Cmd"], json!([]));
    }

    #[test]
    fn empty_entrypoint_resets_the_image_entrypoint() {
        // `--entrypoint ""` sends []: the image's entrypoint goes, its command stays.
        let img = image(Some(&["/entry"]), Some(&["default"]));
        let (out, _) = attached(run(json!({"Image": "x", "Entrypoint": []}), Some(&img)));
        assert_eq!(out["Entrypoint"], json!(["/.weft/wait", "--"]));
        assert_eq!(out["Cmd"], json!(["default"]));
    }

    #[test]
    fn string_forms_are_one_element() {
        let (out, _) = attached(run(json!({"Image": "x", "Entrypoint": "/e", "Cmd": "c"}), None));
        assert_eq!(out["Entrypoint"], json!(["/.weft/wait", "--", "/e"]));
        assert_eq!(out["Cmd"], json!(["c"]));
    }

    #[test]
    fn left_alone() {
        let img = image(None, Some(&["sh"]));
        for body in [
            json!({"Image": "x", "HostConfig": {"NetworkMode": "host"}}),
            json!({"Image": "x", "HostConfig": {"NetworkMode": "container:abc"}}),
            json!({"Image": "x", "Env": ["WEFT_CIDR=none"]}),
            json!({"Image": "x", "Env": ["WEAVE_CIDR=none"]}),
            json!("not an object"),
        ] {
            assert_eq!(run(body, Some(&img)), Plan::Forward);
        }
        // Nothing to run: the daemon's own error ("No command specified") is the right answer.
        assert_eq!(run(json!({"Image": "x"}), Some(&image(None, None))), Plan::Forward);
        assert_eq!(run(json!({"Cmd": null}), None), Plan::Forward);
    }

    #[test]
    fn bad_cidr_is_an_error() {
        let e = plan(
            &json!({"Image": "x", "Env": ["WEFT_CIDR=bogus"]}),
            None,
            None,
            Path::new(WAIT),
        )
        .unwrap_err();
        assert_eq!(e.variable, "WEFT_CIDR");
    }

    #[test]
    fn entries_and_existing_mounts() {
        let body = json!({
            "Image": "x", "Cmd": ["true"], "Entrypoint": ["/e"],
            "Env": ["A=1", "WEFT_CIDR=ip:10.32.4.9/12 net:10.32.8.0/24"],
            "HostConfig": {"Mounts": [{"Type": "volume", "Target": "/data"}], "NetworkMode": "none"},
        });
        let (out, entries) = attached(run(body, None));
        assert_eq!(
            entries,
            vec![
                Entry::Addr(Ipv4Addr::new(10, 32, 4, 9), Some(12)),
                Entry::Within("10.32.8.0/24".parse().unwrap())
            ]
        );
        let mounts = out["HostConfig"]["Mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0]["Target"], "/data");
        assert_eq!(mounts[1]["Target"], "/.weft/wait");
        assert_eq!(out["HostConfig"]["NetworkMode"], "none");
    }

    #[test]
    fn old_api_versions_use_binds() {
        let body = json!({"Image": "x", "Entrypoint": ["/e"], "HostConfig": {"Binds": ["/a:/b"]}});
        let Plan::Attach { body: out, .. } = plan(&body, None, Some(ApiVersion(1, 24)), Path::new(WAIT)).unwrap()
        else {
            panic!("expected Attach")
        };
        assert_eq!(
            out["HostConfig"]["Binds"],
            json!(["/a:/b", format!("{WAIT}:/.weft/wait:ro")])
        );
        assert!(out["HostConfig"].get("Mounts").is_none());
    }

    #[test]
    fn wrapped_is_recognised() {
        assert!(!is_wrapped(&json!({"Entrypoint": ["/bin/sh"]})));
        assert!(!is_wrapped(&json!({"Entrypoint": null})));
        assert!(is_wrapped(&json!({"Entrypoint": ["/.weft/wait", "--", "/bin/sh"]})));
    }
}
