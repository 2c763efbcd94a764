//! The report: figures with their goals, `ok` or `missed`, as a table or as JSON.

use std::io::IsTerminal;

use serde_json::json;

use crate::Cli;

/// A figure of the report.
pub struct Figure {
    pub name: &'static str,
    pub goal: String,
    pub value: f64,
    pub unit: &'static str,
    /// Whether the goal is met (None: informational).
    pub ok: Option<bool>,
}

impl Figure {
    /// A figure with a goal.
    pub fn goal(
        name: &'static str,
        value: f64,
        unit: &'static str,
        goal: String,
        ok: bool,
    ) -> Self {
        Figure {
            name,
            goal,
            value,
            unit,
            ok: Some(ok),
        }
    }

    /// A figure without a goal.
    pub fn info(name: &'static str, value: f64, unit: &'static str) -> Self {
        Figure {
            name,
            goal: "-".into(),
            value,
            unit,
            ok: None,
        }
    }

    fn mark(&self) -> &'static str {
        match self.ok {
            Some(true) => "ok",
            Some(false) => "missed",
            None => "",
        }
    }
}

pub struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(samples: &mut [f64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles {
            min: f64::NAN,
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        };
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        min: at(0.0),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// A line of progress on stderr (kept off a JSON report unless stderr is a terminal).
pub fn progress(json: bool, text: &str) {
    if !json || std::io::stderr().is_terminal() {
        eprintln!("herd-bench: {text}");
    }
}

pub fn report(cli: &Cli, figures: &[Figure]) {
    if cli.json {
        let list: Vec<_> = figures
            .iter()
            .map(|f| {
                json!({"figure": f.name, "goal": f.goal, "value": f.value, "unit": f.unit,
                       "ok": f.ok, "mark": f.mark()})
            })
            .collect();
        println!(
            "{}",
            json!({
                "workers": cli.workers,
                "connections": cli.connections,
                "heartbeat_interval_ms": cli.heartbeat_interval.as_millis() as u64,
                "steady_seconds": cli.duration.as_secs_f64(),
                "missed": figures.iter().filter(|f| f.ok == Some(false)).count(),
                "figures": list,
            })
        );
        return;
    }
    println!();
    println!(
        "herd-bench: N = {} workers over {} connections, heartbeat every {:?}",
        cli.workers, cli.connections, cli.heartbeat_interval
    );
    println!(
        "{:<40} {:>14} {:<7} {:<34}",
        "figure", "measured", "", "goal"
    );
    for f in figures {
        let value = if f.value.abs() >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        println!(
            "{:<40} {:>14} {:<7} {:<34} {}",
            f.name,
            value,
            f.unit,
            f.goal,
            f.mark()
        );
    }
    let missed = figures.iter().filter(|f| f.ok == Some(false)).count();
    println!(
        "{} of {} goals met",
        figures.iter().filter(|f| f.ok == Some(true)).count(),
        figures.len() - figures.iter().filter(|f| f.ok.is_none()).count()
    );
    if missed > 0 {
        println!("{missed} missed (docs/BENCHMARKS.md says what limits each)");
    }
}
