//! The worker views: the `workers` table and `worker <id>` in full (with each GPU and the
//! task holding it).

use std::fmt::Write as _;

use super::{Cell, Style, num, table};
use herd::pb;
use herd::time::{ago, now_ms};

/// The master's clock when it answered, so "last seen" does not depend on this machine's
/// clock; ours when the master did not say.
fn as_of(w: &pb::WorkerInfo, now: i64) -> i64 {
    if w.as_of_ms > 0 { w.as_of_ms } else { now }
}

/// The `workers` table.
pub fn workers(list: &[pb::WorkerInfo], style: Style) -> String {
    if list.is_empty() {
        return "no workers registered yet: start one with scripts/runWorker.sh".into();
    }
    let now = now_ms();
    let rows = list
        .iter()
        .map(|w| {
            let d = w.description.clone().unwrap_or_default();
            let cap = d.capacity.unwrap_or_default();
            let used = w.allocated.unwrap_or_default();
            vec![
                Cell::plain(&d.name),
                Cell::plain(&w.id),
                style.state(w.state()),
                Cell::plain(&d.address),
                Cell::plain(format!("{}/{}", num(used.cpu), num(cap.cpu))),
                Cell::plain(format!("{}/{} GB", num(used.memory_gb), num(cap.memory_gb))),
                Cell::plain(format!("{}/{}", used.gpu, cap.gpu)),
                Cell::plain(format!("{}/{} GB", num(used.disk_gb), num(cap.disk_gb))),
                Cell::plain(w.running_task_ids.len().to_string()),
                Cell::plain(ago(w.last_heartbeat_ms, as_of(w, now))),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ID",
            "STATUS",
            "ADDRESS",
            "CPU",
            "MEMORY",
            "GPU",
            "DISK",
            "TASKS",
            "LAST SEEN",
        ],
        rows,
    )
}

/// One worker in full, for `worker <id|name>`.
pub fn worker(w: &pb::WorkerInfo, style: Style) -> String {
    let now = now_ms();
    let d = w.description.clone().unwrap_or_default();
    let cap = d.capacity.unwrap_or_default();
    let used = w.allocated.unwrap_or_default();
    let usage = w.usage.unwrap_or_default();
    let labels = if d.labels.is_empty() {
        "-".to_string()
    } else {
        let mut l: Vec<_> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        l.join(", ")
    };
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    };
    field("name", d.name.clone());
    field("id", w.id.clone());
    field("status", style.state(w.state()).text);
    field(
        "stream",
        if w.connected { "open" } else { "closed" }.to_string(),
    );
    field("host", d.host.clone());
    field("address", d.address.clone());
    field("version", d.version.clone());
    field(
        "isolation",
        if d.isolation.is_empty() {
            "unknown".to_string()
        } else {
            d.isolation.clone()
        },
    );
    field(
        "runtime",
        if d.container_runtime.is_empty() {
            "none".to_string()
        } else {
            d.container_runtime.clone()
        },
    );
    field(
        "cpu",
        format!(
            "{} of {} allocated, machine at {:.0}%",
            num(used.cpu),
            num(cap.cpu),
            usage.cpu_percent
        ),
    );
    field(
        "memory",
        format!(
            "{} of {} GB allocated, {:.1} GB in use on the machine",
            num(used.memory_gb),
            num(cap.memory_gb),
            usage.memory_used_gb
        ),
    );
    field("gpu", format!("{} of {} allocated", used.gpu, cap.gpu));
    for g in &d.gpus {
        let holder = w.gpu_holders.iter().find(|h| h.index == g.index);
        field(&format!("  gpu {}", g.index), gpu_line(g, holder));
    }
    field(
        "disk",
        format!("{} of {} GB allocated", num(used.disk_gb), num(cap.disk_gb)),
    );
    field("labels", labels);
    field(
        "tasks",
        if w.running_task_ids.is_empty() {
            "none running".to_string()
        } else {
            w.running_task_ids.join(", ")
        },
    );
    field(
        "last heartbeat",
        format!(
            "{} (#{})",
            ago(w.last_heartbeat_ms, as_of(w, now)),
            w.last_sequence
        ),
    );
    field("registered", ago(w.registered_at_ms, now));
    out.pop();
    out
}

/// One GPU of a worker: its model and memory when known, and who holds it.
fn gpu_line(g: &pb::GpuDevice, holder: Option<&pb::GpuHolder>) -> String {
    let mut s = if g.model.is_empty() {
        "model unknown".to_string()
    } else {
        g.model.clone()
    };
    if g.memory_gb > 0.0 {
        let _ = write!(s, ", {} GB", num(g.memory_gb));
    }
    match holder {
        Some(h) => write!(s, ", held by {}", h.task_id),
        None => write!(s, ", free"),
    }
    .ok();
    s
}
