//! Traces: one task per CSV line, `submit_s,duration_s,cpu,memory_gb,gpu,priority`
//! (a header line is allowed), read from a file or generated from a seed.

use std::fmt::Write as _;

/// One task of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceTask {
    /// When it is submitted, ms from the start of the trace.
    pub submit_ms: u64,
    /// How long it runs once placed, ms.
    pub duration_ms: u64,
    pub cpu: f64,
    pub memory_gb: f64,
    pub gpu: u32,
    /// Higher first, FIFO within (as the master's queue).
    pub priority: i32,
}

/// The columns, as the header line names them.
pub const HEADER: &str = "submit_s,duration_s,cpu,memory_gb,gpu,priority";

/// Reads a trace; errors name the line. The tasks come back in submission order (ties:
/// file order).
pub fn parse(text: &str) -> anyhow::Result<Vec<TraceTask>> {
    let mut tasks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("submit")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| {
            let shown: String = line.chars().take(80).collect();
            anyhow::anyhow!("line {}: {what} ('{shown}'); columns: {HEADER}", n + 1)
        };
        if f.len() != 6 {
            return Err(bad(&format!("{} columns instead of 6", f.len())));
        }
        let num = |i: usize, name: &str| -> anyhow::Result<f64> {
            f[i].parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(&format!("{name} is not a number >= 0")))
        };
        let cpu = num(2, "cpu")?;
        if cpu <= 0.0 {
            return Err(bad("cpu must be above 0"));
        }
        tasks.push(TraceTask {
            submit_ms: (num(0, "submit_s")? * 1000.0).round() as u64,
            duration_ms: (num(1, "duration_s")? * 1000.0).round().max(1.0) as u64,
            cpu,
            memory_gb: num(3, "memory_gb")?,
            gpu: f[4].parse().map_err(|_| bad("gpu is not a whole number"))?,
            priority: f[5]
                .parse()
                .map_err(|_| bad("priority is not an integer"))?,
        });
    }
    tasks.sort_by_key(|t| t.submit_ms);
    Ok(tasks)
}

/// The trace as CSV, header first.
pub fn to_csv(tasks: &[TraceTask]) -> String {
    let mut out = format!("{HEADER}\n");
    for t in tasks {
        let _ = writeln!(
            out,
            "{:.3},{:.3},{},{},{},{}",
            t.submit_ms as f64 / 1000.0,
            t.duration_ms as f64 / 1000.0,
            t.cpu,
            t.memory_gb,
            t.gpu,
            t.priority
        );
    }
    out
}

/// A synthetic trace of `n` tasks over `hours`, the same for the same seed: arrivals
/// follow a day's curve (busiest mid-day, a quarter of it at night), and the mix is
/// 70% small short jobs, 20% medium, 8% large and 2% GPU jobs; one in five
/// has a higher priority, one in twenty a lower one.
pub fn synthetic(seed: u64, n: usize, hours: f64) -> Vec<TraceTask> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let span = hours * 3600.0;
    let mut tasks = Vec::with_capacity(n);
    // Arrival times by rejection against the daily curve (period: 24 h).
    while tasks.len() < n {
        let t = rng.f64() * span;
        let day = (t / 86_400.0).fract();
        let rate = 0.625 - 0.375 * (std::f64::consts::TAU * day).cos();
        if rng.f64() > rate {
            continue;
        }
        let exp = |rng: &mut fastrand::Rng, mean: f64| -mean * (1.0 - rng.f64()).ln();
        let kind = rng.u32(..100);
        let (cpu, memory_gb, gpu, duration) = match kind {
            0..70 => (
                [0.5, 1.0, 2.0][rng.usize(..3)],
                [0.5, 1.0, 2.0, 4.0][rng.usize(..4)],
                0,
                exp(&mut rng, 300.0),
            ),
            70..90 => (
                [4.0, 8.0][rng.usize(..2)],
                [8.0, 16.0, 32.0][rng.usize(..3)],
                0,
                exp(&mut rng, 1800.0),
            ),
            90..98 => (
                [16.0, 24.0, 32.0][rng.usize(..3)],
                [64.0, 96.0, 128.0][rng.usize(..3)],
                0,
                exp(&mut rng, 3600.0),
            ),
            _ => (
                [4.0, 8.0][rng.usize(..2)],
                [32.0, 64.0][rng.usize(..2)],
                [1, 1, 2, 4][rng.usize(..4)],
                exp(&mut rng, 3600.0),
            ),
        };
        let priority = match rng.u32(..20) {
            0..4 => 10,
            4 => -5,
            _ => 0,
        };
        tasks.push(TraceTask {
            submit_ms: (t * 1000.0) as u64,
            duration_ms: ((duration.max(1.0)) * 1000.0) as u64,
            cpu,
            memory_gb,
            gpu,
            priority,
        });
    }
    tasks.sort_by_key(|t| t.submit_ms);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_round_trips_and_bad_lines_are_named() {
        let tasks = synthetic(3, 50, 2.0);
        assert_eq!(tasks.len(), 50);
        let back = parse(&to_csv(&tasks)).unwrap();
        assert_eq!(back.len(), 50);
        assert_eq!(back[10].cpu, tasks[10].cpu);
        assert_eq!(back[10].submit_ms, tasks[10].submit_ms);
        let err = parse("submit_s,duration_s,cpu,memory_gb,gpu,priority\n1,2,3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 2: 3 columns"), "{err}");
        let err = parse("1,2,x,0,0,0\n").unwrap_err().to_string();
        assert!(err.contains("cpu is not a number"), "{err}");
    }

    #[test]
    fn the_generator_is_deterministic_for_a_seed() {
        assert_eq!(synthetic(7, 200, 24.0), synthetic(7, 200, 24.0));
        assert_ne!(synthetic(7, 200, 24.0), synthetic(8, 200, 24.0));
    }
}
