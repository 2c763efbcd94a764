//! `--svg FILE`: allocated CPU, memory and GPU share of the cluster over time, one panel
//! per policy, as a hand-written SVG (no plotting library).

use std::fmt::Write as _;

use super::sim::{Outcome, Sample};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 150.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;
/// Points per line: the step function is sampled at this many instants.
const POINTS: usize = 600;
const SERIES: [(&str, &str); 3] = [
    ("cpu", "#1f77b4"),
    ("memory", "#2ca02c"),
    ("gpu", "#d62728"),
];

/// The share held at each of `POINTS` instants from 0 to `end_ms` (a step function: the
/// last sample at or before each instant).
fn resample(samples: &[Sample], end_ms: u64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(POINTS + 1);
    let mut k = 0;
    for p in 0..=POINTS {
        let t = end_ms * p as u64 / POINTS as u64;
        while k + 1 < samples.len() && samples[k + 1].t_ms <= t {
            k += 1;
        }
        out.push(Sample {
            t_ms: t,
            ..samples[k]
        });
    }
    out
}

/// The whole picture; the time axis is shared (the longest makespan).
pub fn render(outcomes: &[Outcome], title: &str) -> String {
    let start = outcomes
        .iter()
        .flat_map(|o| o.samples.first())
        .map(|s| s.t_ms)
        .min()
        .unwrap_or(0);
    let end = outcomes
        .iter()
        .flat_map(|o| o.samples.last())
        .map(|s| s.t_ms)
        .max()
        .unwrap_or(1)
        .max(start + 1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + outcomes.len() as f64 * (PANEL + GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (n, (name, colour)) in SERIES.iter().enumerate() {
        let x = WIDTH - RIGHT - 230.0 + n as f64 * 80.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/><text x="{}" y="18">{name}</text>"#,
            x + 16.0
        );
    }
    let hours = (end - start) as f64 / 3_600_000.0;
    let tick_h = [1.0, 2.0, 4.0, 6.0, 12.0, 24.0, 48.0]
        .into_iter()
        .find(|h| hours / h <= 12.0)
        .unwrap_or(168.0);
    for (p, o) in outcomes.iter().enumerate() {
        let y0 = TOP + p as f64 * (PANEL + GAP);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 6.0,
            o.policy.as_str()
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##
        );
        for pct in [0, 50, 100] {
            let y = y0 + PANEL * (1.0 - pct as f64 / 100.0);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{pct}%</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0
            );
        }
        let mut h = 0.0;
        while h <= hours + 1e-9 {
            let x = LEFT + plot_w * h / hours.max(1e-9);
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{h}h</text>"#,
                y0 + PANEL + 14.0
            );
            h += tick_h;
        }
        let points = resample(&o.samples, end);
        for (name, colour) in SERIES {
            let mut path = String::new();
            for q in &points {
                let v = match name {
                    "cpu" => q.cpu,
                    "memory" => q.memory,
                    _ => q.gpu,
                };
                let x =
                    LEFT + plot_w * (q.t_ms.saturating_sub(start)) as f64 / (end - start) as f64;
                let y = y0 + PANEL * (1.0 - v.clamp(0.0, 1.0));
                let _ = write!(path, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{}"/>"#,
                path.trim_end()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::sim::{parse_cluster, run};
    use crate::replay::trace::synthetic;
    use herd::config::SchedulerKind;

    #[test]
    fn one_panel_and_three_lines_per_policy() {
        let machines = parse_cluster("2x8:32:1").unwrap();
        let trace = synthetic(1, 60, 2.0);
        let outcomes: Vec<_> = SchedulerKind::ALL
            .into_iter()
            .map(|p| run(&trace, &machines, p))
            .collect();
        let svg = render(&outcomes, "a <test>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 9);
        assert!(svg.contains("bin-pack") && svg.contains("a &lt;test&gt;"));
    }
}
