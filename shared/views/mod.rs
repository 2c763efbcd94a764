//! The JSON views of the contract: the shapes `herdctl --json` prints and the HTTP API
//! serves (documented in README.md), one definition for both. Field names never change
//! meaning; new fields may be added.

pub mod identity;

use serde_json::{Value, json};

use crate::pb;

pub fn worker(w: &pb::WorkerInfo) -> Value {
    let d = w.description.clone().unwrap_or_default();
    let cap = d.capacity.unwrap_or_default();
    let used = w.allocated.unwrap_or_default();
    let usage = w.usage.unwrap_or_default();
    json!({
        "id": w.id,
        "name": d.name,
        "status": state_word(w.state()),
        "host": d.host,
        "address": d.address,
        "version": d.version,
        "runtime": d.container_runtime,
        "isolation": d.isolation,
        "labels": d.labels,
        "cpu": {"allocated": used.cpu, "total": cap.cpu, "usage_percent": usage.cpu_percent},
        "memory_gb": {"allocated": used.memory_gb, "total": cap.memory_gb, "in_use": usage.memory_used_gb},
        "gpu": {"allocated": used.gpu, "total": cap.gpu},
        "gpus": d.gpus.iter().map(|g| json!({
            "index": g.index,
            "model": g.model,
            "memory_gb": g.memory_gb,
            "task_id": w.gpu_holders.iter().find(|h| h.index == g.index).map(|h| &h.task_id),
        })).collect::<Vec<_>>(),
        "disk_gb": {"allocated": used.disk_gb, "total": cap.disk_gb},
        "tasks": w.running_task_ids,
        "connected": w.connected,
        "last_heartbeat_ms": w.last_heartbeat_ms,
        "registered_at_ms": w.registered_at_ms,
        "as_of_ms": w.as_of_ms,
    })
}

pub fn workers(list: &[pb::WorkerInfo]) -> Value {
    Value::Array(list.iter().map(worker).collect())
}

pub fn task(t: &pb::TaskInfo) -> Value {
    let spec = t.spec.clone().unwrap_or_default();
    let r = spec.resources.unwrap_or_default();
    json!({
        "id": t.id,
        "name": spec.name,
        "state": task_state_word(t.state()),
        "image": spec.image,
        "command": spec.command,
        "cpu": r.cpu,
        "memory_gb": r.memory_gb,
        "gpu": r.gpu,
        "disk_gb": r.disk_gb,
        "gpu_ids": t.gpu_ids,
        "priority": spec.priority,
        "constraints": spec.constraints,
        "timeout_ms": spec.timeout_ms,
        "env": spec.env.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "workdir": spec.workdir,
        "retries": spec.retries,
        "on_disconnect": if spec.keep_on_disconnect { "keep" } else { "stop" },
        "worker_id": t.worker_id,
        "worker_name": t.worker_name,
        "attempts": t.attempts,
        "exit_code": t.exit_code,
        "reason": t.reason,
        "submitted_ms": t.submitted_ms,
        "submitted_by": t.submitted_by,
        "started_ms": t.started_ms,
        "finished_ms": t.finished_ms,
        "history": t.history.iter().map(|a| json!({
            "attempt": a.attempt,
            "worker_id": a.worker_id,
            "worker_name": a.worker_name,
            "outcome": a.outcome,
            "exit_code": a.exit_code,
            "reason": a.reason,
            "assigned_ms": a.assigned_ms,
            "finished_ms": a.finished_ms,
            "gpu_ids": a.gpu_ids,
        })).collect::<Vec<_>>(),
    })
}

pub fn tasks(list: &[pb::TaskInfo]) -> Value {
    Value::Array(list.iter().map(task).collect())
}

pub fn summary(s: &pb::ClusterSummary) -> Value {
    let counts = |list: &[pb::StateCount]| {
        list.iter()
            .map(|c| (c.state.clone(), Value::from(c.count)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "workers": counts(&s.workers),
        "tasks": counts(&s.tasks),
        "queue_length": s.queue_length,
        "scheduler": s.scheduler,
        "masters": s.masters.iter().map(|m| json!({
            "address": m.address,
            "http": m.http,
            "role": m.role,
            "term": m.term,
            "last_seen_ms": m.last_seen_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The status word of a worker state.
pub fn state_word(state: pb::WorkerState) -> &'static str {
    match state {
        pb::WorkerState::Active => "Active",
        pb::WorkerState::Inactive => "Inactive",
        pb::WorkerState::Removed => "Removed",
        pb::WorkerState::Draining => "Draining",
        pb::WorkerState::Pending => "Pending",
        pb::WorkerState::Unspecified => "Unknown",
    }
}

/// The state word of a task.
pub fn task_state_word(state: pb::TaskState) -> &'static str {
    crate::domain::TaskState::try_from(state)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}
