//! Percentiles of one phase, medians over rounds, and the comparison table.

use std::time::Duration;

/// The `p`-th percentile (0 < p <= 100) of `sorted` by nearest rank; 0 if empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `v` (the mean of the middle two for an even count); 0 if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One phase of one round against one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseStats {
    pub count: usize,
    pub ops_per_s: f64,
    /// Latencies in µs.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl PhaseStats {
    /// From per-op latencies in ns and the phase's wall time.
    pub fn from_latencies(mut lat_ns: Vec<u64>, wall: Duration) -> Self {
        lat_ns.sort_unstable();
        let us = |p| percentile(&lat_ns, p) as f64 / 1000.0;
        let secs = wall.as_secs_f64();
        Self {
            count: lat_ns.len(),
            ops_per_s: if secs > 0.0 {
                lat_ns.len() as f64 / secs
            } else {
                0.0
            },
            p50: us(50.0),
            p90: us(90.0),
            p99: us(99.0),
        }
    }

    /// Field-wise medians over rounds (each figure its own median).
    pub fn median_of(rounds: &[PhaseStats]) -> Self {
        let m = |f: fn(&PhaseStats) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        Self {
            count: m(|s| s.count as f64) as usize,
            ops_per_s: m(|s| s.ops_per_s),
            p50: m(|s| s.p50),
            p90: m(|s| s.p90),
            p99: m(|s| s.p99),
        }
    }
}

/// One line of the table: an op at a depth, both servers' medians.
#[derive(Debug, Clone)]
pub struct Row {
    pub op: String,
    pub depth: usize,
    pub servers: Vec<PhaseStats>,
}

fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A Markdown table: per server ops/s and p50/p90/p99 µs, then the first server's ops/s
/// over the second's (> 1: the first is faster).
pub fn table(names: &[String], rows: &[Row]) -> String {
    let mut out = String::from("| op | depth |");
    for n in names {
        out += &format!(" {n} ops/s | {n} p50/p90/p99 µs |");
    }
    if names.len() == 2 {
        out += &format!(" {}/{} ops/s |", names[0], names[1]);
    }
    out += "\n|---|---|";
    for _ in names {
        out += "---|---|";
    }
    if names.len() == 2 {
        out += "---|";
    }
    out += "\n";
    for r in rows {
        out += &format!("| {} | {} |", r.op, r.depth);
        for s in &r.servers {
            if s.count == 0 {
                // A server that takes no OPEN: the guest sends nothing for this op.
                out += " no request | — |";
                continue;
            }
            out += &format!(
                " {:.0} | {} / {} / {} |",
                s.ops_per_s,
                fmt_us(s.p50),
                fmt_us(s.p90),
                fmt_us(s.p99)
            );
        }
        if let [a, b] = r.servers[..] {
            if a.count == 0 || b.count == 0 {
                out += " — |";
            } else {
                let ratio = if b.ops_per_s > 0.0 {
                    a.ops_per_s / b.ops_per_s
                } else {
                    0.0
                };
                out += &format!(" {ratio:.2} |");
            }
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
