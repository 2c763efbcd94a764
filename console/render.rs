//! How answers look: aligned tables and detail views, with colour only on a terminal.

use std::fmt::Write as _;
use std::io::IsTerminal;

use herd::pb;
use herd::time::{ago, now_ms};
pub use herd::views::{state_word, task_state_word};

mod workers;
pub use workers::{worker, workers};
pub mod identity;

/// Whether to paint status words. Decided once per program from the output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    pub fn plain() -> Style {
        Style { color: false }
    }

    /// A worker state with its coloured dot: green Active, red Inactive, grey Removed.
    fn state(self, state: pb::WorkerState) -> Cell {
        let word = state_word(state);
        if !self.color {
            return Cell::plain(word);
        }
        let color = match state {
            pb::WorkerState::Active => "32",
            pb::WorkerState::Inactive => "31",
            pb::WorkerState::Draining => "33",
            pb::WorkerState::Pending => "36",
            _ => "90",
        };
        Cell {
            width: word.chars().count() + 2,
            text: format!("\x1b[{color}m●\x1b[0m {word}"),
        }
    }
}

/// A table cell: its text (possibly with colour codes) and its visible width.
struct Cell {
    text: String,
    width: usize,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell {
            width: text.chars().count(),
            text,
        }
    }
}

/// [`table`] of plain cells.
pub(crate) fn table_of(header: &[&str], rows: Vec<Vec<String>>) -> String {
    table(
        header,
        rows.into_iter()
            .map(|r| r.into_iter().map(Cell::plain).collect())
            .collect(),
    )
}

/// Renders rows under a header, columns separated by two spaces, like kubectl does.
fn table(header: &[&str], rows: Vec<Vec<Cell>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width);
        }
    }
    let mut out = String::new();
    let header: Vec<Cell> = header.iter().map(|h| Cell::plain(*h)).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(&cell.text);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.width + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// A number with the precision it was given (up to three decimals): 0.25 stays 0.25.
fn num(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn resources(r: Option<pb::Resources>) -> String {
    let r = r.unwrap_or_default();
    let mut s = format!("{} cpu", num(r.cpu));
    if r.memory_gb > 0.0 {
        s.push_str(&format!(", {} GB", num(r.memory_gb)));
    }
    if r.gpu > 0 {
        s.push_str(&format!(", {} gpu", r.gpu));
    }
    if r.disk_gb > 0.0 {
        s.push_str(&format!(", {} GB disk", num(r.disk_gb)));
    }
    s
}

fn what(spec: &pb::TaskSpec) -> String {
    let mut s = String::new();
    if !spec.image.is_empty() {
        s.push_str(&format!("[{}] ", spec.image));
    }
    s.push_str(&spec.command);
    let s = s.trim().replace('\n', " ");
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(39).collect::<String>())
    } else {
        s
    }
}

/// The `tasks` table.
pub fn tasks(list: &[pb::TaskInfo]) -> String {
    if list.is_empty() {
        return "no tasks".into();
    }
    let now = now_ms();
    let rows = list
        .iter()
        .map(|t| {
            let spec = t.spec.clone().unwrap_or_default();
            vec![
                Cell::plain(&t.id),
                Cell::plain(if spec.name.is_empty() {
                    "-"
                } else {
                    &spec.name
                }),
                Cell::plain(task_state_word(t.state())),
                Cell::plain(if t.worker_name.is_empty() {
                    "-"
                } else {
                    &t.worker_name
                }),
                Cell::plain(resources(spec.resources)),
                Cell::plain(t.attempts.to_string()),
                Cell::plain(t.exit_code.map(|c| c.to_string()).unwrap_or("-".into())),
                Cell::plain(ago(t.submitted_ms, now)),
                Cell::plain(what(&spec)),
                Cell::plain(&t.reason),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "WORKER",
            "REQUEST",
            "ATTEMPTS",
            "EXIT",
            "SUBMITTED",
            "COMMAND",
            "REASON",
        ],
        rows,
    )
}

/// One task in full, for `task status <id>`.
pub fn task(t: &pb::TaskInfo) -> String {
    let now = now_ms();
    let spec = t.spec.clone().unwrap_or_default();
    let when = |ms: i64| {
        if ms > 0 {
            ago(ms, now)
        } else {
            "-".to_string()
        }
    };
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<12}{v}", format!("{k}:"));
    };
    field("id", t.id.clone());
    if !spec.name.is_empty() {
        field("name", spec.name.clone());
    }
    field("state", task_state_word(t.state()).to_string());
    if !t.reason.is_empty() {
        field("reason", t.reason.clone());
    }
    if !spec.image.is_empty() {
        field("image", spec.image.clone());
    }
    if !spec.command.is_empty() {
        field("command", spec.command.clone());
    }
    field("request", resources(spec.resources));
    if !t.gpu_ids.is_empty() {
        field("gpus", ids(&t.gpu_ids));
    }
    if spec.priority != 0 {
        field("priority", spec.priority.to_string());
    }
    if !spec.constraints.is_empty() {
        field("constraints", spec.constraints.join(", "));
    }
    if spec.timeout_ms > 0 {
        field(
            "timeout",
            herd::time::short(std::time::Duration::from_millis(spec.timeout_ms)),
        );
    }
    if !spec.env.is_empty() {
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        field("env", env.join(" "));
    }
    if !spec.workdir.is_empty() {
        field("workdir", spec.workdir.clone());
    }
    if spec.retries > 0 {
        // A failed run followed by another attempt (or, queued, by one to come).
        let failed = |a: &pb::AttemptInfo| a.outcome == "failed";
        let mut used = t
            .history
            .iter()
            .filter(|a| failed(a) && a.attempt < t.attempts)
            .count();
        if t.state() == pb::TaskState::Queued && t.history.last().is_some_and(failed) {
            used += 1;
        }
        field("retries", format!("{} ({used} used)", spec.retries));
    }
    if spec.keep_on_disconnect {
        field(
            "disconnect",
            "keep (left running when its worker is cut off from the master)".to_string(),
        );
    }
    field(
        "worker",
        if t.worker_id.is_empty() {
            "-".to_string()
        } else {
            format!("{} ({})", t.worker_name, t.worker_id)
        },
    );
    field("attempts", t.attempts.to_string());
    field(
        "exit code",
        t.exit_code.map(|c| c.to_string()).unwrap_or("-".into()),
    );
    field("submitted", when(t.submitted_ms));
    if !t.submitted_by.is_empty() {
        field("by", t.submitted_by.clone());
    }
    field("started", when(t.started_ms));
    field("finished", when(t.finished_ms));
    for a in &t.history {
        let mut line = format!(
            "#{} on {} ({}): {}",
            a.attempt, a.worker_name, a.worker_id, a.outcome
        );
        if let Some(code) = a.exit_code {
            let _ = write!(line, ", exit {code}");
        }
        if !a.reason.is_empty() {
            let _ = write!(line, ", {}", a.reason);
        }
        if !a.gpu_ids.is_empty() {
            let _ = write!(line, ", gpus {}", ids(&a.gpu_ids));
        }
        let _ = write!(line, ", assigned {}", when(a.assigned_ms));
        field("attempt", line);
    }
    out.pop();
    out
}

/// GPU indices as CUDA_VISIBLE_DEVICES shows them: `0,2`.
fn ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// What `task submit` prints: the id first, so scripts can take the first word.
pub fn submitted(t: &pb::TaskInfo) -> String {
    match t.state() {
        pb::TaskState::Queued => format!("{} queued: {}", t.id, t.reason),
        state => {
            let mut s = format!("{} {}", t.id, task_state_word(state));
            if !t.worker_name.is_empty() {
                s.push_str(&format!(" on {}", t.worker_name));
            }
            s
        }
    }
}

/// The `status` view: counts of workers and tasks by state, and the queue.
pub fn summary(s: &pb::ClusterSummary, style: Style) -> String {
    let mut out = String::new();
    let workers: Vec<String> = s
        .workers
        .iter()
        .map(|c| {
            let state = match c.state.as_str() {
                "Active" => pb::WorkerState::Active,
                "Draining" => pb::WorkerState::Draining,
                "Inactive" => pb::WorkerState::Inactive,
                "Pending" => pb::WorkerState::Pending,
                "Removed" => pb::WorkerState::Removed,
                _ => pb::WorkerState::Unspecified,
            };
            format!("{} {}", style.state(state).text, c.count)
        })
        .collect();
    let tasks: Vec<String> = s
        .tasks
        .iter()
        .map(|c| format!("{} {}", c.state, c.count))
        .collect();
    let _ = writeln!(out, "workers:    {}", workers.join("   "));
    let _ = writeln!(out, "tasks:      {}", tasks.join("   "));
    let _ = writeln!(out, "queue:      {} waiting", s.queue_length);
    let _ = write!(out, "scheduler:  {}", s.scheduler);
    // Standby masters (a PostgreSQL store): who leads, in which term, and who waits.
    let now = herd::time::now_ms();
    for m in &s.masters {
        let _ = write!(
            out,
            "\n{:<11} {} (term {}, seen {})",
            format!("{}:", m.role),
            m.address,
            m.term,
            herd::time::ago(m.last_seen_ms, now)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_every_worker_state_once() {
        let count = |state: &str, n: u32| pb::StateCount {
            state: state.into(),
            count: n,
        };
        let s = pb::ClusterSummary {
            workers: vec![
                count("Pending", 1),
                count("Active", 2),
                count("Draining", 0),
                count("Inactive", 3),
                count("Removed", 4),
            ],
            ..Default::default()
        };
        let text = summary(&s, Style::plain());
        let line = text.lines().next().unwrap();
        assert!(line.contains("Pending 1"), "{line}");
        assert!(line.contains("Removed 4"), "{line}");
        assert_eq!(line.matches("Removed").count(), 1, "{line}");
    }

    fn info(name: &str, state: pb::WorkerState) -> pb::WorkerInfo {
        pb::WorkerInfo {
            id: format!("w-{name}"),
            description: Some(pb::WorkerDescription {
                name: name.into(),
                address: "127.0.0.1".into(),
                capacity: Some(pb::Resources {
                    cpu: 4.0,
                    memory_gb: 7.5,
                    gpu: 0,
                    disk_gb: 0.0,
                }),
                ..Default::default()
            }),
            state: state as i32,
            last_heartbeat_ms: now_ms(),
            ..Default::default()
        }
    }

    #[test]
    fn workers_table_is_aligned_and_plain_without_a_terminal() {
        let out = workers(
            &[
                info("a", pb::WorkerState::Active),
                info("longer-name", pb::WorkerState::Inactive),
            ],
            Style::plain(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME         ID             STATUS"));
        assert!(lines[1].contains("Active"));
        assert!(lines[2].contains("Inactive"));
        assert_eq!(lines[1].find("w-a"), lines[2].find("w-longer-name"));
        assert!(lines[1].contains("0/7.5 GB"));
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn colour_puts_a_dot_before_the_status() {
        let out = workers(&[info("a", pb::WorkerState::Active)], Style { color: true });
        assert!(out.contains("\x1b[32m●\x1b[0m Active"), "{out}");
    }
}
