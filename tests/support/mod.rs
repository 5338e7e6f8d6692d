//! Shared test harness code; each test binary includes it with `mod support;` and
//! uses a different subset, hence the dead-code allowance.
#![allow(dead_code)]

pub mod cluster;
pub mod control_plane;
pub mod fixtures;
pub mod moto;
pub mod partition;
pub mod root;
pub mod stack;
