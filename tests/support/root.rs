//! The checkout the tests run in. Cargo and nextest set `CARGO_MANIFEST_DIR` when they
//! run a test, to this checkout; the value compiled in is the checkout the binary was
//! built in. With one target directory shared by several checkouts (CI's clone and a
//! working tree), cargo can reuse a binary built in another one, which would then read
//! that checkout's files, or fail when it is gone. So the run's value comes first.

use std::sync::OnceLock;

pub fn repo_root() -> &'static str {
    static ROOT: OnceLock<String> = OnceLock::new();
    ROOT.get_or_init(|| std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()))
}
