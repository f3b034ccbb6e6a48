//! The checks, one file per checklist item. Each `run` appends its findings
//! in catalogue order; a check that cannot run says `unknown` with what it
//! lacked, never a guess.

pub(super) mod access;
pub(super) mod account;
pub(super) mod logging;
pub(super) mod monitoring;
pub(super) mod passwords;
pub(super) mod rotation;
pub(super) mod sensitive;
pub(super) mod tls;
