//! No core dumps while a backup's plaintext, its login's password or an age
//! identity is in memory.
//!
//! [`no_core_dumps`] makes the process not dumpable (`PR_SET_DUMPABLE` 0:
//! the kernel writes no core of it and other processes of the same user
//! cannot attach to it) and sets its core size limit to 0, soft and hard.
//! The limit, unlike the dumpable flag, survives `exec`: pg_dump and
//! pg_restore, which hold the same plaintext, inherit it and cannot raise it
//! again (systemd-coredump and apport honour it when the kernel pipes cores
//! to them). It never fails a command: where the kernel refuses, it says so
//! in the log.

use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};

/// Called first by `pgwarden backup`, `backup verify` and `restore`.
pub(crate) fn no_core_dumps() {
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(event = "core_dumps_not_disabled", step = "PR_SET_DUMPABLE", error = %e);
    }
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none) {
        tracing::warn!(event = "core_dumps_not_disabled", step = "RLIMIT_CORE", error = %e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{dumpable_behavior, getrlimit};

    #[test]
    fn the_process_and_its_children_dump_no_core() {
        no_core_dumps();
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        let limit = getrlimit(Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        let child = std::process::Command::new("sh")
            .args(["-c", "ulimit -c; ulimit -H -c"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&child.stdout), "0\n0\n");
    }
}
