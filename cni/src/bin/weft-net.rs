//! `weft-net`: the Weft CNI plugin (see the `weft_cni` crate).

use std::process::ExitCode;

fn main() -> ExitCode {
    weft_cni::plugin::main(weft_cni::plugin::Plugin::Net)
}
