//! One measurement: a pgbench run, or a bulk COPY through psql, against one target.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::targets::{Bench, Target};

/// What pgbench printed that the report uses.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchResult {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Average latency of one transaction (one round trip with `-S`), in milliseconds.
    pub latency_ms: f64,
    /// With `-C`: the average time to open a connection, in milliseconds.
    pub connection_ms: Option<f64>,
    /// Transactions completed in the run.
    pub transactions: f64,
}

/// Runs `pgbench -n <args>` against `target` and parses its summary.
pub fn pgbench(bench: &Bench, target: Target, args: &[&str]) -> PgbenchResult {
    let out = bench
        .client("pgbench", target)
        .arg("-n")
        .args(args)
        .output()
        .expect("running pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let log = match target {
            Target::PgBouncer => bench.bouncer_dir.path().join("pgbouncer.log"),
            _ => bench.env.dir.path().join("pgwarden.log"),
        };
        panic!(
            "pgbench {args:?} against {} failed:\n{stdout}\n{}\nits log:\n{}\nPostgreSQL's log:\n{}",
            target.name(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(log).unwrap_or_default(),
            bench.env.cluster.server_log()
        );
    }
    parse_pgbench(&stdout).unwrap_or_else(|| panic!("could not read pgbench's summary:\n{stdout}"))
}

/// Reads `tps = …`, `latency average = … ms`, `average connection time = … ms` and
/// `number of transactions actually processed: …`.
fn parse_pgbench(text: &str) -> Option<PgbenchResult> {
    let number_after = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        line.split('=')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(PgbenchResult {
        tps: number_after("tps =")?,
        latency_ms: number_after("latency average =")?,
        connection_ms: number_after("average connection time ="),
        transactions: text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?,
    })
}

/// `COPY (…) TO STDOUT` of `mb` MiB through `target`, discarded by psql; the elapsed time.
pub fn copy_out(bench: &Bench, target: Target, mb: usize) -> Duration {
    // 1 KiB per row: a 1015-character payload, a tab, up to 7 digits, a newline.
    let rows = mb * 1024;
    let sql = format!(
        "\\copy (SELECT g, repeat('x', 1015) FROM generate_series(1, {rows}) g) TO '/dev/null'"
    );
    let start = Instant::now();
    let out = bench
        .client("psql", target)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
        .output()
        .expect("running psql");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "COPY out through {} failed:\n{}",
        target.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// Writes a COPY text file of about `mb` MiB for [`copy_in`].
pub fn copy_input(bench: &Bench, mb: usize) -> PathBuf {
    let path = bench.env.dir.path().join("copy-in.tsv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("the COPY file"));
    let payload = "y".repeat(1015);
    for i in 0..mb * 1024 {
        writeln!(f, "{i}\t{payload}").expect("writing the COPY file");
    }
    f.flush().expect("writing the COPY file");
    path
}

/// `TRUNCATE` then `COPY bench_copy FROM STDIN` of `file` through `target`; the elapsed
/// time of the COPY alone (psql's `\timing` would include start-up).
pub fn copy_in(bench: &Bench, target: Target, file: &Path) -> Duration {
    let truncate = bench
        .client("psql", target)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "TRUNCATE bench_copy",
        ])
        .output()
        .expect("running psql");
    assert!(
        truncate.status.success(),
        "TRUNCATE through {} failed:\n{}",
        target.name(),
        String::from_utf8_lossy(&truncate.stderr)
    );
    let start = Instant::now();
    let out = bench
        .client("psql", target)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY bench_copy FROM STDIN",
        ])
        .stdin(Stdio::from(
            std::fs::File::open(file).expect("the COPY file"),
        ))
        .output()
        .expect("running psql");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "COPY in through {} failed:\n{}",
        target.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// CPU time a process (all its threads) has used so far, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_user_system(pid).map(|(user, system)| user + system)
}

/// A process's CPU time in user space and in the kernel, in seconds.
pub fn cpu_user_system(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_ticks_per_second();
    let field = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / tick);
    Some((field(11)?, field(12)?))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
