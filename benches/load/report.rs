//! The report: medians per scenario and target, ratios against direct PostgreSQL and PgBouncer,
//! and the targets pgwarden is held to, printed as a table and as JSON.

use std::collections::BTreeMap;

use crate::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// `pgbench -S`, several clients: transactions per second (higher is better).
    Throughput,
    /// CPU time the proxy process spent per transaction of the throughput run, in
    /// microseconds: what the proxy costs, whatever the machine's cores are busy with.
    ProxyCpuUsPerTransaction,
    /// `pgbench -S`, one client: milliseconds per round trip (lower is better).
    RoundTripMs,
    /// `pgbench -S -C`: a new connection per transaction, transactions per second.
    ConnectionsPerSecond,
    /// `pgbench -C`'s average connection time in milliseconds (lower is better).
    ConnectionSetupMs,
    /// COPY … TO STDOUT, MiB per second.
    CopyOutMBps,
    /// COPY … FROM STDIN, MiB per second.
    CopyInMBps,
    /// Resident memory per idle session, KiB (lower is better).
    IdleKiBPerSession,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Throughput => "select-only throughput (tps)",
            Scenario::ProxyCpuUsPerTransaction => "proxy CPU per transaction (us)",
            Scenario::RoundTripMs => "one client, ms per round trip",
            Scenario::ConnectionsPerSecond => "new connection per transaction (tps)",
            Scenario::ConnectionSetupMs => "connection set-up (ms)",
            Scenario::CopyOutMBps => "COPY out (MiB/s)",
            Scenario::CopyInMBps => "COPY in (MiB/s)",
            Scenario::IdleKiBPerSession => "memory per idle session (KiB)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput_tps",
            Scenario::ProxyCpuUsPerTransaction => "proxy_cpu_us_per_transaction",
            Scenario::RoundTripMs => "round_trip_ms",
            Scenario::ConnectionsPerSecond => "connections_per_second",
            Scenario::ConnectionSetupMs => "connection_setup_ms",
            Scenario::CopyOutMBps => "copy_out_mib_per_s",
            Scenario::CopyInMBps => "copy_in_mib_per_s",
            Scenario::IdleKiBPerSession => "idle_kib_per_session",
        }
    }
}

pub struct Report {
    samples: BTreeMap<(Scenario, Target), Vec<f64>>,
    header: String,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

impl Report {
    pub fn new(seconds: u64, clients: usize, scale: u32, copy_mb: usize, idle: usize) -> Report {
        Report {
            samples: BTreeMap::new(),
            header: format!(
                "pgbench {seconds}s per run, {clients} clients, scale {scale}; COPY {copy_mb} MiB; \
                 {idle} idle sessions; TLS on every leg; medians over rounds"
            ),
        }
    }

    pub fn add(&mut self, scenario: Scenario, target: Target, value: f64) {
        self.samples
            .entry((scenario, target))
            .or_default()
            .push(value);
    }

    fn get(&self, scenario: Scenario, target: Target) -> Option<f64> {
        self.samples.get(&(scenario, target)).map(|v| median(v))
    }

    pub fn print(&self) {
        println!("\n{}\n", self.header);
        println!(
            "| {:<38} | {:>10} | {:>10} | {:>10} | {:>14} | {:>16} |",
            "scenario", "direct", "pgbouncer", "pgwarden", "pgwarden/direct", "pgwarden/pgbouncer"
        );
        println!(
            "|{:-<40}|{:-<12}|{:-<12}|{:-<12}|{:-<16}|{:-<18}|",
            "", "", "", "", "", ""
        );
        let scenarios: Vec<Scenario> = {
            let mut s: Vec<Scenario> = self.samples.keys().map(|(s, _)| *s).collect();
            s.dedup();
            s
        };
        for s in scenarios {
            let cell = |t| {
                self.get(s, t)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "-".into())
            };
            let ratio = |other| match (self.get(s, Target::Pgwarden), self.get(s, other)) {
                (Some(w), Some(o)) if o != 0.0 => format!("{:.3}", w / o),
                _ => "-".into(),
            };
            println!(
                "| {:<38} | {:>10} | {:>10} | {:>10} | {:>14} | {:>16} |",
                s.label(),
                cell(Target::Direct),
                cell(Target::PgBouncer),
                cell(Target::Pgwarden),
                ratio(Target::Direct),
                ratio(Target::PgBouncer),
            );
        }
        println!();
        let pair = |s| Some((self.get(s, Target::Pgwarden)?, self.get(s, Target::Direct)?));
        if let Some((w, d)) = pair(Scenario::Throughput) {
            println!("throughput vs direct: {:.3}x (target >= 0.85x)", w / d);
        }
        if let Some((w, d)) = pair(Scenario::RoundTripMs) {
            println!(
                "added per round trip: {:.1} us (target <= 40 us)",
                (w - d) * 1000.0
            );
        }
        for s in [Scenario::CopyOutMBps, Scenario::CopyInMBps] {
            if let Some((w, d)) = pair(s) {
                println!("{} vs direct: {:.3}x", s.label(), w / d);
            }
        }
    }

    pub fn to_json(&self) -> String {
        let mut out = serde_json::Map::new();
        out.insert("settings".into(), self.header.clone().into());
        for ((s, t), v) in &self.samples {
            let entry = out
                .entry(s.key())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            entry[t.name()] = serde_json::json!({ "median": median(v), "samples": v });
        }
        serde_json::Value::Object(out).to_string()
    }
}
