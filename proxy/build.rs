//! Compiles `wait/weft-wait.rs` into a static binary that the proxy embeds
//! (`weft_proxy::wait::BINARY`) and bind-mounts into containers, where there
//! may be no libc and no dynamic loader. It is one std-only file, so rustc is
//! run on it directly rather than through a second cargo package.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET for build scripts");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts")).join("weft-wait");
    let output = Command::new(&rustc)
        .args(["--edition", "2024", "--crate-type", "bin", "--crate-name", "weft_wait"])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "strip=symbols"])
        .args(["-C", "target-feature=+crt-static", "--target", &target])
        .arg("-o")
        .arg(&out)
        .arg(PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join(SOURCE))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", rustc.to_string_lossy()));
    assert!(
        output.status.success(),
        "compiling {SOURCE} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

const SOURCE: &str = "wait/weft-wait.rs";
