//! Everything the proxy parses comes from a client or a daemon it does not
//! control: arbitrary input gets an answer, never a panic.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};
use weft_proxy::cidr;
use weft_proxy::create::{self, CommandLine, Plan};
use weft_proxy::path::{self, ApiVersion};

/// Any JSON value, biased towards the keys a create body has.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("Image".to_owned()),
        Just("Env".to_owned()),
        Just("Cmd".to_owned()),
        Just("Entrypoint".to_owned()),
        Just("HostConfig".to_owned()),
        Just("NetworkMode".to_owned()),
        Just("Mounts".to_owned()),
        Just("Binds".to_owned()),
        "[A-Za-z]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("WEFT_CIDR=ip:10.32.0.9/12".to_owned()),
            Just("WEFT_CIDR=none".to_owned()),
            Just("host".to_owned()),
            "WEFT_CIDR=[ -~]{0,30}",
            ".{0,20}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #[test]
    fn cidr_values_parse_or_say_why(value in "[ -~]{0,60}") {
        match cidr::parse("WEFT_CIDR", &value) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("WEFT_CIDR=")),
        }
    }

    #[test]
    fn any_path_is_classified(method in "(GET|POST|HEAD|[A-Z]{1,6})", path in "(/v[0-9.]{0,6})?(/[a-z0-9_.%-]{0,12}){0,5}/?") {
        let _ = path::classify(&method, &path);
    }

    #[test]
    fn any_create_body_is_planned(body in json(), image in json(), old_api in any::<bool>()) {
        let api = old_api.then_some(ApiVersion(1, 24));
        let wait = Path::new("/var/lib/weft/weft-wait");
        let image = CommandLine::of(&image);
        if let Ok(Plan::Attach { body: out, .. }) = create::plan(&body, Some(&image), api, wait) {
            // Wrapped, and everything else the client sent is still there.
            prop_assert!(create::is_wrapped(&out));
            for (k, v) in body.as_object().unwrap() {
                if !matches!(k.as_str(), "Entrypoint" | "Cmd" | "HostConfig") {
                    prop_assert_eq!(&out[k], v);
                }
            }
        }
    }
}
