//! The host veth's name for each user: deterministic, so that deleting a
//! pod's interface needs no saved state, and unchanged from the first
//! versions, so that DEL, GC and detach find veths that older versions made.

/// The host veth's name for the CNI plugin: `weft` and 11 hex digits of the
/// FNV-1a 64 hash of `container_id`, a NUL byte and `ifname` (shifted right
/// by 20 bits), 15 bytes in all (the kernel's limit).
pub fn cni_host_veth(container_id: &str, ifname: &str) -> String {
    let hash = fnv1a([container_id.as_bytes(), &[0], ifname.as_bytes()]);
    format!("weft{:011x}", hash >> 20)
}

/// The host veth's name for the Docker proxy: `weftd` and 10 hex digits of
/// the FNV-1a 64 hash of the container id (shifted right by 24 bits), 15
/// bytes in all. The `d` keeps these apart from [`cni_host_veth`]'s.
pub fn docker_host_veth(container_id: &str) -> String {
    format!("weftd{:010x}", fnv1a([container_id.as_bytes()]) >> 24)
}

/// Whether `name` is a host veth this crate names ([`cni_host_veth`] or
/// [`docker_host_veth`]): `weft` and 11 lowercase hex digits (the proxy's
/// `d` is one of them).
pub fn is_host_veth(name: &str) -> bool {
    name.strip_prefix("weft")
        .is_some_and(|h| h.len() == 11 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// FNV-1a 64 of the concatenated `parts`: stable across Rust versions,
/// unlike std's hasher.
fn fnv1a<const N: usize>(parts: [&[u8]; N]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(OFFSET_BASIS, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veths_are_told_from_other_links() {
        assert!(is_host_veth(&cni_host_veth("abc", "eth0")));
        assert!(is_host_veth(&docker_host_veth("abc")));
        for other in [
            "weft",
            "weftd",
            "eth0",
            "weft0123456789a0",
            "weft0123456789A",
            "weft0123456789g",
        ] {
            assert!(!is_host_veth(other), "{other}");
        }
    }

    #[test]
    fn cni_names_are_short_stable_and_distinct() {
        let a = cni_host_veth("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert_eq!(a, cni_host_veth("0123456789abcdef", "eth0"));
        assert_ne!(a, cni_host_veth("0123456789abcdef", "eth1"));
        assert_ne!(a, cni_host_veth("0123456789abcdee", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(cni_host_veth("ab", "c"), cni_host_veth("a", "bc"));
        // Worked out by a separate implementation: the names are fixed for good.
        assert_eq!(cni_host_veth("", ""), "weftaf63bd4c860");
        assert_eq!(a, "weftc152f20cf95");
    }

    #[test]
    fn docker_names_are_short_stable_and_distinct() {
        // FNV-1a 64 of "" is the offset basis, cbf29ce484222325; of "a", af63dc4c8601ec8c.
        assert_eq!(docker_host_veth(""), "weftdcbf29ce484");
        assert_eq!(docker_host_veth("a"), "weftdaf63dc4c86");
        let id = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
        let name = docker_host_veth(id);
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("weftd"));
        assert_eq!(name, docker_host_veth(id));
        assert_ne!(name, docker_host_veth(&id[..63]));
    }
}
