//! `weft-proxy`: the Docker API proxy on its own. Not written yet.

fn main() {}
