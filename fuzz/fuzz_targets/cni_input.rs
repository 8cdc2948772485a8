//! What a CNI plugin decodes: the network configuration on stdin (with any
//! `prevResult`), and the router's HTTP replies (read by `weft-api`'s
//! blocking client, which the plugins use).
//!
//! Decoding never panics; a configuration that parses has a result that can
//! be written in every supported version and read back; an error result is
//! always valid JSON, whatever its message holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::config::{NetConf, SUPPORTED_VERSIONS};
use weft_cni::error::CniError;
use weft_cni::result::CniResult;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(conf) = NetConf::parse(bytes)
        && let Some(prev) = &conf.prev_result
        && let Ok(result) = CniResult::from_value(prev)
    {
        for version in SUPPORTED_VERSIONS {
            let written = result.to_value(version);
            let back = CniResult::from_value(&written).expect("a written result reads back");
            assert_eq!(back.ips, result.ips);
        }
    }
    let _ = weft_api::blocking::parse_response(bytes);
    let err = CniError::new(6, String::from_utf8_lossy(bytes)).details(String::from_utf8_lossy(bytes));
    let json: serde_json::Value = serde_json::from_str(&err.to_json("1.0.0")).expect("error JSON");
    assert_eq!(json["code"], 6);
});
