//! The spec's error result: `{"cniVersion", "code", "msg", "details"}` on stdout and a non-zero exit.

use serde::Serialize;

/// A failed request, as the CNI spec reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (code {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// A well-known code (below 100) or one of this plugin's (100 and up).
    pub code: u32,
    /// A short message for people.
    pub msg: String,
    /// More context, possibly empty.
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    #[must_use]
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error result for a request of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }
}

/// The spec's well-known codes and this plugin's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (netlink, sysctl, files).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin, a router reply).
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the router is not answering or has no address ring yet.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (spec 1.1): the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The router refused the request (the details carry its code and message).
    pub const ROUTER_REFUSED: u32 = 100;
    /// No free address is left in the pod range.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// CHECK found the pod's network different from prevResult.
    pub const CHECK_MISMATCH: u32 = 102;
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "the weft router is not answering")
            .details("connect /run/weft/weft.sock: connection refused");
        let v: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "code": 11,
                "msg": "the weft router is not answering",
                "details": "connect /run/weft/weft.sock: connection refused",
            })
        );
        let bare: Value =
            serde_json::from_str(&CniError::new(code::DECODING_FAILURE, "x\"y").to_json("0.4.0")).unwrap();
        assert_eq!(bare, json!({"cniVersion": "0.4.0", "code": 6, "msg": "x\"y"}));
        assert!(e.to_string().contains("code 11"));
    }
}
