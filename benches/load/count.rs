//! The repeatable comparison: what each proxy spends per transaction, counted rather than
//! timed, so that a machine shared with other work cannot blur it.
//!
//! The same fixed workload, `pgbench -S -c C -j 1 -t T`, runs through pgwarden and through
//! PgBouncer, twice per measure: with `T = N` and with `T = 2N` transactions per client. The
//! difference of the two counts divided by `N × C` is the cost of one transaction alone:
//! connection set-up and teardown (a credential, TLS handshakes, SCRAM) are the same in both
//! runs and cancel out. Each proxy first serves a warm-up run, so PgBouncer's pooled server
//! connections exist before anything is counted.
//!
//! - **Instructions** (user space, all threads): the proxy runs under
//!   `valgrind --tool=callgrind`; before each run its counters are zeroed
//!   (`callgrind_control -z`), after it they are dumped (`callgrind_control -d`) and the
//!   dump's total is read. The dumps stay on disk for `callgrind_annotate --inclusive=yes`.
//! - **System calls**: `strace -c -f` attached to the native proxy for the run.
//! - **Context switches** (voluntary and not, all threads, from `/proc`) and **CPU time**,
//!   of the native proxy without strace.
//!
//! The same difference, with `pgbench -S -C -c 1 -t N` (a new connection per transaction),
//! gives the instructions one connection costs from its set-up to pgwarden's revocation of its
//! credential.
//!
//! Knobs: `BENCH_COUNT_TX` (N, default 2000 per client), `BENCH_COUNT_CLIENTS` (C, 4),
//! `BENCH_COUNT_CONNECTIONS` (N of the connection workload, 20).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::run;
use crate::targets::{Bench, Target};

/// One counted figure for one proxy: its value for `N` and for `2N` transactions per client.
struct Pair {
    n: f64,
    two_n: f64,
}

impl Pair {
    fn per_transaction(&self, transactions: f64) -> f64 {
        (self.two_n - self.n) / transactions
    }
}

/// The counting mode's settings.
pub struct Counting {
    pub transactions: usize,
    pub clients: usize,
    /// N for the connection-per-transaction workload (`pgbench -C -c 1`).
    pub connections: usize,
}

/// Runs the counting mode: natively first (system calls, context switches, CPU time), then
/// under callgrind (instructions). Prints a table; returns the rows for `BENCH_OUT`.
pub async fn run(c: &Counting, max_sessions: usize) -> serde_json::Value {
    let per = (c.transactions * c.clients) as f64;
    let mut rows = serde_json::Map::new();
    let mut table: Vec<(String, f64, f64)> = Vec::new();

    eprintln!("counting, native: a cluster, pgwarden and PgBouncer …");
    let bench = Bench::start(max_sessions, 0, false).await;
    bench.init_pgbench(1);
    for target in [Target::Pgwarden, Target::PgBouncer] {
        warm_up(&bench, target, c);
        let switches = measure(&bench, target, c, |pid, run| {
            let before = context_switches(pid);
            let cpu_before = run::cpu_user_system(pid);
            run();
            let after = context_switches(pid);
            let cpu_after = run::cpu_user_system(pid);
            let (user, system) = cpu_after
                .zip(cpu_before)
                .map_or((0.0, 0.0), |((ua, sa), (ub, sb))| (ua - ub, sa - sb));
            (after - before, (user + system, user))
        })
        .await;
        let syscalls = measure(&bench, target, c, |pid, run| strace_calls(pid, run)).await;
        let key = target.name();
        let ctx = Pair {
            n: switches.0.0,
            two_n: switches.1.0,
        };
        let cpu = Pair {
            n: switches.0.1.0,
            two_n: switches.1.1.0,
        };
        let cpu_user = Pair {
            n: switches.0.1.1,
            two_n: switches.1.1.1,
        };
        let calls = Pair {
            n: syscalls.0.0,
            two_n: syscalls.1.0,
        };
        table.push((
            format!("{key}: system calls"),
            calls.per_transaction(per),
            0.0,
        ));
        table.push((
            format!("{key}: context switches"),
            ctx.per_transaction(per),
            0.0,
        ));
        table.push((
            format!("{key}: CPU, us"),
            cpu.per_transaction(per) * 1e6,
            0.0,
        ));
        table.push((
            format!("{key}: of which user space, us"),
            cpu_user.per_transaction(per) * 1e6,
            0.0,
        ));
        eprintln!(
            "{key}: system calls by kind, {} transactions:\n{}",
            2 * c.transactions * c.clients,
            syscalls.1.1
        );
        rows.insert(
            format!("{key}_syscalls_per_transaction"),
            calls.per_transaction(per).into(),
        );
        rows.insert(
            format!("{key}_context_switches_per_transaction"),
            ctx.per_transaction(per).into(),
        );
        rows.insert(
            format!("{key}_cpu_us_per_transaction"),
            (cpu.per_transaction(per) * 1e6).into(),
        );
        rows.insert(
            format!("{key}_user_cpu_us_per_transaction"),
            (cpu_user.per_transaction(per) * 1e6).into(),
        );
    }
    bench.stop().await;

    eprintln!("counting under callgrind: a cluster, pgwarden and PgBouncer …");
    // Dumps of an earlier run would be mistaken for this one's.
    let _ = std::fs::remove_dir_all(kept_dumps());
    let bench = Bench::start(max_sessions, 0, true).await;
    bench.init_pgbench(1);
    for target in [Target::Pgwarden, Target::PgBouncer] {
        warm_up(&bench, target, c);
        let out = bench.callgrind_out(target).expect("a callgrind target");
        let counted = measure(&bench, target, c, |pid, run| {
            callgrind_control(pid, "-z");
            run();
            callgrind_control(pid, "-d");
            let dump = keep(&newest_dump(&out));
            (totals(&dump), dump)
        })
        .await;
        let ir = Pair {
            n: counted.0.0,
            two_n: counted.1.0,
        };
        let key = target.name();
        table.push((format!("{key}: instructions"), ir.per_transaction(per), 0.0));
        rows.insert(
            format!("{key}_instructions_per_transaction"),
            ir.per_transaction(per).into(),
        );
        // A connection per transaction: what one connection costs, set-up to clean-up.
        let connects = measure_workload(
            &bench,
            target,
            &["-S", "-C", "-c", "1", "-j", "1"],
            c.connections,
            |pid, run| {
                callgrind_control(pid, "-z");
                run();
                callgrind_control(pid, "-d");
                let dump = keep(&newest_dump(&out));
                (totals(&dump), dump)
            },
        )
        .await;
        let per_connection = Pair {
            n: connects.0.0,
            two_n: connects.1.0,
        }
        .per_transaction(c.connections as f64);
        table.push((
            format!("{key}: instructions per connection"),
            per_connection,
            0.0,
        ));
        rows.insert(
            format!("{key}_instructions_per_connection"),
            per_connection.into(),
        );
        eprintln!(
            "{key}: callgrind dump of the 2N connections: {}",
            connects.1.1.display()
        );
        eprintln!(
            "{key}: callgrind dump of the 2N run: {}\n  callgrind_annotate --inclusive=yes {}",
            counted.1.1.display(),
            counted.1.1.display()
        );
    }
    bench.stop().await;

    println!(
        "\ncounted per transaction: pgbench -S -c {} -j 1, (count(2N) - count(N)) / (N x C), N = {}\n",
        c.clients, c.transactions
    );
    for (what, value, _) in &table {
        println!("| {what:<34} | {value:>12.2} |");
    }
    let mut ratios = Vec::new();
    for what in [
        "instructions_per_transaction",
        "syscalls_per_transaction",
        "context_switches_per_transaction",
        "cpu_us_per_transaction",
        "user_cpu_us_per_transaction",
        "instructions_per_connection",
    ] {
        let get = |k: String| rows.get(&k).and_then(serde_json::Value::as_f64);
        if let (Some(w), Some(b)) = (
            get(format!("pgwarden_{what}")),
            get(format!("pgbouncer_{what}")),
        ) && b > 0.0
        {
            println!("pgwarden / pgbouncer, {what}: {:.3}", w / b);
            ratios.push((format!("ratio_{what}"), w / b));
        }
    }
    for (key, ratio) in ratios {
        rows.insert(key, ratio.into());
    }
    serde_json::Value::Object(rows)
}

/// A run that is not counted: connections, caches and PgBouncer's server pool warm.
fn warm_up(bench: &Bench, target: Target, c: &Counting) {
    let clients = c.clients.to_string();
    run::pgbench(
        bench,
        target,
        &["-S", "-c", &clients, "-j", "1", "-t", "200"],
    );
}

/// Runs `count` around the `N` run and around the `2N` run of the select-only workload;
/// `count` gets the proxy's pid and the run to wrap, and returns what it counted.
async fn measure<T>(
    bench: &Bench,
    target: Target,
    c: &Counting,
    count: impl FnMut(u32, &mut dyn FnMut()) -> T,
) -> (T, T) {
    let clients = c.clients.to_string();
    let args = ["-S", "-c", &clients, "-j", "1"];
    measure_workload(bench, target, &args, c.transactions, count).await
}

/// [`measure`] for `pgbench <args> -t N` and `-t 2N`.
async fn measure_workload<T>(
    bench: &Bench,
    target: Target,
    args: &[&str],
    n: usize,
    mut count: impl FnMut(u32, &mut dyn FnMut()) -> T,
) -> (T, T) {
    let pid = bench.pid(target).expect("a proxy");
    let mut one = |t: usize| {
        let t = t.to_string();
        // The run ends once pgwarden has also revoked every credential it issued for it,
        // so that its clean-up is counted with it and not in the next.
        let mut run = || {
            let mut all = args.to_vec();
            all.extend(["-t", &t]);
            run::pgbench(bench, target, &all);
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(bench.wait_for_issued_roles_at_most(0))
            });
        };
        count(pid, &mut run)
    };
    bench.wait_for_issued_roles_at_most(0).await;
    let first = one(n);
    let second = one(2 * n);
    (first, second)
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn context_switches(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// System calls of `pid` (all threads) during `run`, and strace's table.
fn strace_calls(pid: u32, run: &mut dyn FnMut()) -> (f64, String) {
    let out = tempfile::NamedTempFile::new().expect("a file for strace");
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting strace (apt-get install strace)");
    // Once it traces every thread, strace says "Process N attached with T threads" (or
    // "Process N attached", one line per thread, for a process it saw start).
    let mut lines = BufReader::new(strace.stderr.take().expect("strace's stderr")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("attached") => break,
            Some(Ok(_)) => {}
            _ => panic!("strace ended before attaching"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    run();
    Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status()
        .expect("stopping strace");
    strace.wait().expect("strace's exit");
    let table = std::fs::read_to_string(out.path()).expect("strace's summary");
    let total = table
        .lines()
        .find(|l| l.trim_end().ends_with(" total"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or_else(|| panic!("no total in strace's summary:\n{table}"));
    (total, table)
}

/// `callgrind_control <what> <pid>`, as the user the proxy runs as: vgdb, which it drives,
/// talks to a process owned by another user only through ptrace, and waits forever when the
/// process sleeps in a system call (PgBouncer runs as an unprivileged user).
fn callgrind_control(pid: u32, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let proc = std::fs::metadata(format!("/proc/{pid}")).expect("the proxy's /proc entry");
    let owner = proc.uid();
    let mut cmd = if owner == 0 {
        Command::new("callgrind_control")
    } else {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={owner}"),
            &format!("--regid={}", proc.gid()),
            "--clear-groups",
            "--inh-caps=-all",
            "callgrind_control",
        ]);
        c
    };
    let out = cmd
        .args([what, &pid.to_string()])
        .output()
        .expect("running callgrind_control");
    assert!(
        out.status.success(),
        "callgrind_control {what} {pid}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The latest dump callgrind wrote for `out` (`out.1`, `out.2`, …).
fn newest_dump(out: &Path) -> PathBuf {
    let dir = out.parent().expect("a directory");
    let name = out
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let mut dumps: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .expect("the dump directory")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let k = n.strip_prefix(&name)?.strip_prefix('.')?.parse().ok()?;
            Some((k, e.path()))
        })
        .collect();
    dumps.sort();
    dumps.pop().expect("a callgrind dump").1
}

/// Where the dumps are kept once the bench's directories are gone:
/// `target/bench-callgrind/<proxy>.callgrind.<k>` (k = 1, 2: the N and 2N runs; 3, 4: the
/// connection workload's).
fn kept_dumps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-callgrind")
}

/// Copies `dump` (once complete) to [`kept_dumps`] and returns the copy's path.
fn keep(dump: &Path) -> PathBuf {
    totals(dump);
    let dir = kept_dumps();
    std::fs::create_dir_all(&dir).expect("target/bench-callgrind");
    let to = dir.join(dump.file_name().expect("a dump's name"));
    std::fs::copy(dump, &to).expect("keeping a callgrind dump");
    to
}

/// The instruction total of a callgrind dump.
fn totals(dump: &Path) -> f64 {
    // Dumps may appear a moment after callgrind_control returns.
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(dump)
            && let Some(v) = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no total in {}", dump.display())
}
