//! `WEFT_CIDR` (and `WEAVE_CIDR`, for people coming from Weave): which mesh
//! addresses a container asks for, in Weave's semantics.
//!
//! | value | meaning |
//! |---|---|
//! | unset, empty, `net:default` | one address chosen by the router |
//! | `none` | not attached to the mesh |
//! | `ip:10.32.4.9/12` | exactly this address (the prefix length is optional) |
//! | `net:10.32.4.0/24` | any free address inside this subnet |
//! | several of them, space-separated | one address for each, on the same interface |
//!
//! `WEFT_CIDR` wins when both are set. The router checks that addresses and
//! subnets lie inside its pod range; this module checks only the syntax.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The environment variables read, in order of precedence.
pub const VARIABLES: [&str; 2] = ["WEFT_CIDR", "WEAVE_CIDR"];

/// Most addresses one container may ask for.
pub const MAX_ENTRIES: usize = 16;

/// One address a container asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Any free address (`net:default`, or nothing said).
    Auto,
    /// This address; with the prefix length given, else the pod range's.
    Addr(Ipv4Addr, Option<u8>),
    /// Any free address inside this subnet; the interface gets the subnet's prefix length.
    Within(Ipv4Net),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("net:default"),
            Self::Addr(ip, None) => write!(f, "ip:{ip}"),
            Self::Addr(ip, Some(len)) => write!(f, "ip:{ip}/{len}"),
            Self::Within(net) => write!(f, "net:{net}"),
        }
    }
}

/// A `WEFT_CIDR` value that does not parse; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct CidrError {
    /// Which variable held it.
    pub variable: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong, and what would be right.
    pub reason: String,
}

/// What a container's environment (`KEY=VALUE` strings, as in a create
/// request's `Config.Env`) asks for: `None` for `none`, else the entries.
/// A later duplicate of a variable overrides an earlier one, as in Docker.
///
/// # Errors
/// [`CidrError`] naming the variable, its value and the mistake.
pub fn from_env<'a>(env: impl IntoIterator<Item = &'a str>) -> Result<Option<Vec<Entry>>, CidrError> {
    let mut found: [Option<&str>; 2] = [None, None];
    for pair in env {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if let Some(i) = VARIABLES.iter().position(|v| *v == key) {
            found[i] = Some(value);
        }
    }
    match VARIABLES
        .iter()
        .zip(found)
        .find_map(|(var, value)| Some((*var, value?)))
    {
        Some((variable, value)) => parse(variable, value),
        None => Ok(Some(vec![Entry::Auto])),
    }
}

/// Parses the value of `variable`.
///
/// # Errors
/// As [`from_env`].
pub fn parse(variable: &'static str, value: &str) -> Result<Option<Vec<Entry>>, CidrError> {
    let fail = |reason: String| CidrError {
        variable,
        value: value.to_owned(),
        reason,
    };
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.is_empty() {
        return Ok(Some(vec![Entry::Auto]));
    }
    if words.contains(&"none") {
        if words.len() > 1 {
            return Err(fail("\"none\" cannot be combined with addresses".into()));
        }
        return Ok(None);
    }
    if words.len() > MAX_ENTRIES {
        return Err(fail(format!("at most {MAX_ENTRIES} addresses per container")));
    }
    let mut entries = Vec::with_capacity(words.len());
    for word in words {
        let entry = entry(word).map_err(|reason| fail(format!("{word:?}: {reason}")))?;
        if entry != Entry::Auto && entries.contains(&entry) {
            return Err(fail(format!("{word:?} is given twice")));
        }
        entries.push(entry);
    }
    Ok(Some(entries))
}

fn entry(word: &str) -> Result<Entry, String> {
    const HOW: &str = "write ip:ADDRESS[/LEN], net:SUBNET/LEN, net:default or none \
                       (for example ip:10.32.4.9/12 or net:10.32.4.0/24)";
    if let Some(rest) = word.strip_prefix("ip:") {
        let (ip, len) = match rest.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (rest, None),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address; {HOW}"))?;
        let len = match len {
            None => None,
            Some(len) => Some(
                len.parse::<u8>()
                    .ok()
                    .filter(|l| (1..=32).contains(l))
                    .ok_or_else(|| format!("prefix length {len:?} is not between 1 and 32"))?,
            ),
        };
        return Ok(Entry::Addr(ip, len));
    }
    if let Some(rest) = word.strip_prefix("net:") {
        if rest == "default" {
            return Ok(Entry::Auto);
        }
        let net: Ipv4Net = rest
            .parse()
            .map_err(|_| format!("{rest:?} is not an IPv4 subnet like 10.32.4.0/24; {HOW}"))?;
        if net.trunc() != net {
            return Err(format!(
                "{net} has host bits set; the subnet is {} (or use ip:{net} for that address)",
                net.trunc()
            ));
        }
        if net.prefix_len() > 30 {
            return Err(format!(
                "{net} is too small to hold a container address; use /30 or larger"
            ));
        }
        return Ok(Entry::Within(net));
    }
    Err(HOW.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> Option<Vec<Entry>> {
        parse("WEFT_CIDR", v).unwrap()
    }

    fn err(v: &str) -> String {
        parse("WEFT_CIDR", v).unwrap_err().to_string()
    }

    #[test]
    fn weave_forms() {
        assert_eq!(ok(""), Some(vec![Entry::Auto]));
        assert_eq!(ok("  "), Some(vec![Entry::Auto]));
        assert_eq!(ok("net:default"), Some(vec![Entry::Auto]));
        assert_eq!(ok("none"), None);
        assert_eq!(
            ok("ip:10.32.4.9/12"),
            Some(vec![Entry::Addr(Ipv4Addr::new(10, 32, 4, 9), Some(12))])
        );
        assert_eq!(
            ok("ip:10.32.4.9"),
            Some(vec![Entry::Addr(Ipv4Addr::new(10, 32, 4, 9), None)])
        );
        assert_eq!(
            ok("net:10.32.4.0/24"),
            Some(vec![Entry::Within("10.32.4.0/24".parse().unwrap())])
        );
        assert_eq!(
            ok("ip:10.32.4.9/12  net:10.32.8.0/24 net:default"),
            Some(vec![
                Entry::Addr(Ipv4Addr::new(10, 32, 4, 9), Some(12)),
                Entry::Within("10.32.8.0/24".parse().unwrap()),
                Entry::Auto,
            ])
        );
    }

    #[test]
    fn mistakes_say_how_to_fix_them() {
        assert!(err("bogus").contains("write ip:ADDRESS"), "{}", err("bogus"));
        assert!(err("10.32.4.9/12").contains("write ip:ADDRESS"));
        assert!(err("ip:10.32.4.300").contains("not an IPv4 address"));
        assert!(err("ip:10.32.4.9/33").contains("between 1 and 32"));
        assert!(err("ip:fd00::1").contains("not an IPv4 address"));
        assert!(err("net:10.32.4.1/24").contains("the subnet is 10.32.4.0/24"));
        assert!(err("net:10.32.4.4/31").contains("too small"));
        assert!(err("none ip:10.32.4.9").contains("cannot be combined"));
        assert!(err("ip:10.32.4.9 ip:10.32.4.9").contains("given twice"));
        assert!(err(&"net:default ".repeat(MAX_ENTRIES + 1)).contains("at most"));
        let e = err("bogus");
        assert!(e.starts_with("WEFT_CIDR=\"bogus\": "), "{e}");
    }

    #[test]
    fn environment_precedence() {
        assert_eq!(from_env(["PATH=/bin"]).unwrap(), Some(vec![Entry::Auto]));
        assert_eq!(from_env(["WEAVE_CIDR=none"]).unwrap(), None);
        assert_eq!(
            from_env(["WEFT_CIDR=net:default", "WEAVE_CIDR=none"]).unwrap(),
            Some(vec![Entry::Auto])
        );
        assert_eq!(
            from_env(["WEFT_CIDR=none", "WEFT_CIDR="]).unwrap(),
            Some(vec![Entry::Auto])
        );
        assert_eq!(from_env(["WEFT_CIDR"]).unwrap(), Some(vec![Entry::Auto]));
        let e = from_env(["WEAVE_CIDR=ip:x"]).unwrap_err();
        assert_eq!(e.variable, "WEAVE_CIDR");
    }

    #[test]
    fn display_round_trips() {
        for v in ["ip:10.32.4.9/12", "ip:10.32.4.9", "net:10.32.4.0/24", "net:default"] {
            let entries = ok(v).unwrap();
            assert_eq!(entries[0].to_string(), v);
        }
    }
}
