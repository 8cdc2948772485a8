//! `weft-ipam`: the Weft IPAM plugin alone, for other main plugins (see the `weft_cni` crate).

use std::process::ExitCode;

fn main() -> ExitCode {
    weft_cni::plugin::main(weft_cni::plugin::Plugin::Ipam)
}
