// Every integration-test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod harness;
pub mod hcl;
pub mod java;
pub mod logs;
pub mod shipped;
pub mod vault_double;
pub mod vault_setup;
pub mod wire;
