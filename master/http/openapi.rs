//! `GET /api/v1/openapi.json`: the document utoipa generates from the handlers, with every
//! limit (lengths, patterns, ranges, counts) stated from the constants and patterns the
//! validation itself uses (`herd::domain`), so the document says exactly what the server
//! accepts and the two cannot drift. schemathesis checks both ways in CI: a request the
//! document allows is not refused for its input, and one it forbids is refused.

use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use herd::constraint::{CONSTRAINT_PATTERN, MAX_CONSTRAINTS};
use herd::domain::identity::MAX_TOKEN_NAME_LEN;
use herd::domain::limits::{
    LABEL_KEY_PATTERN, MAX_COMMAND_LEN, MAX_IMAGE_LEN, MAX_LABEL_LEN, MAX_LABELS, MAX_NAME_LEN,
    NAME_PATTERN, NO_CONTROL_PATTERN, NUMBERED_PAGE_TOKEN_PATTERN, PRIORITIES,
};
use herd::domain::run::{
    ENV_KEY_PATTERN, MAX_BATCH, MAX_ENV_KEY_LEN, MAX_ENV_VARS, MAX_RETRIES, MAX_TIMEOUT,
    MAX_WORKDIR_LEN, WORKDIR_PATTERN,
};
use herd::domain::{MAX_CPU, MAX_DISK_GB, MAX_GPU, MAX_MEMORY_GB};

use super::api::Doc;
use crate::ops::MAX_PAGE;

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    axum::Json(document())
}

/// The whole document.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(Doc::openapi()).expect("the document is JSON");
    for (schema, field, rules) in body_limits() {
        merge(property(&mut doc, schema, field), rules);
    }
    for (path, method, param, rules) in parameter_limits() {
        merge(parameter(&mut doc, path, method, param), rules);
    }
    events_schema(&mut doc);
    // A batch with a count takes exactly one task, copied; without, the tasks as given.
    doc["components"]["schemas"]["BatchBody"]["anyOf"] = json!([
        {"properties": {"tasks": {"maxItems": 1}}},
        {"properties": {"count": {"type": "null"}}},
    ]);
    doc
}

/// The rules of each field of a request body.
fn body_limits() -> Vec<(&'static str, &'static str, Value)> {
    let name = json!({"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": NAME_PATTERN});
    vec![
        ("AddWorkerBody", "name", name.clone()),
        (
            "AddWorkerBody",
            "labels",
            json!({
                "maxProperties": MAX_LABELS,
                "propertyNames": {"maxLength": MAX_LABEL_LEN, "pattern": LABEL_KEY_PATTERN},
                "additionalProperties": {"maxLength": MAX_LABEL_LEN, "pattern": NO_CONTROL_PATTERN},
            }),
        ),
        (
            "TokenBody",
            "name",
            json!({"minLength": 1, "maxLength": MAX_TOKEN_NAME_LEN, "pattern": NAME_PATTERN}),
        ),
        (
            "TokenBody",
            "role",
            json!({"enum": ["admin", "operator", "viewer"]}),
        ),
        (
            "SchedulerBody",
            "scheduler",
            json!({"enum": ["round-robin", "resource-aware"]}),
        ),
        (
            "BatchBody",
            "tasks",
            json!({"minItems": 1, "maxItems": MAX_BATCH}),
        ),
        (
            "BatchBody",
            "count",
            json!({"minimum": 1, "maximum": MAX_BATCH}),
        ),
        (
            "SubmitBody",
            "name",
            json!({"maxLength": MAX_NAME_LEN, "pattern": NO_CONTROL_PATTERN}),
        ),
        (
            "SubmitBody",
            "image",
            json!({
                "maxLength": MAX_IMAGE_LEN,
                "pattern": "^([^\\s\\x00-\\x1f\\x7f-\\x9f-][^\\s\\x00-\\x1f\\x7f-\\x9f]*)?$",
            }),
        ),
        (
            "SubmitBody",
            "command",
            json!({"maxLength": MAX_COMMAND_LEN}),
        ),
        (
            "SubmitBody",
            "cpu",
            json!({"exclusiveMinimum": 0, "maximum": MAX_CPU}),
        ),
        (
            "SubmitBody",
            "memory_gb",
            json!({"minimum": 0, "maximum": MAX_MEMORY_GB}),
        ),
        (
            "SubmitBody",
            "gpu",
            json!({"minimum": 0, "maximum": MAX_GPU}),
        ),
        (
            "SubmitBody",
            "disk_gb",
            json!({"minimum": 0, "maximum": MAX_DISK_GB}),
        ),
        (
            "SubmitBody",
            "priority",
            json!({"minimum": PRIORITIES.start(), "maximum": PRIORITIES.end()}),
        ),
        (
            "SubmitBody",
            "constraints",
            json!({"maxItems": MAX_CONSTRAINTS, "items": {"pattern": CONSTRAINT_PATTERN}}),
        ),
        (
            "SubmitBody",
            "timeout_ms",
            json!({"minimum": 0, "maximum": MAX_TIMEOUT.as_millis() as u64}),
        ),
        (
            "SubmitBody",
            "env",
            json!({
                "maxProperties": MAX_ENV_VARS,
                "propertyNames": {"maxLength": MAX_ENV_KEY_LEN, "pattern": ENV_KEY_PATTERN},
                "additionalProperties": {"pattern": "^[^\\x00]*$"},
            }),
        ),
        (
            "SubmitBody",
            "workdir",
            json!({"maxLength": MAX_WORKDIR_LEN, "pattern": WORKDIR_PATTERN}),
        ),
        (
            "SubmitBody",
            "retries",
            json!({"minimum": 0, "maximum": MAX_RETRIES}),
        ),
    ]
}

/// The rules of each parameter (path, method, name).
fn parameter_limits() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let page_size = json!({"minimum": 0, "maximum": u32::MAX,
        "description": format!("at most this many (default 100; above {MAX_PAGE} means {MAX_PAGE})")});
    let numbered = json!({"pattern": NUMBERED_PAGE_TOKEN_PATTERN});
    let token = json!({"minLength": 1, "maxLength": MAX_TOKEN_NAME_LEN, "pattern": NAME_PATTERN});
    // Optional, and a number when given (never `null`).
    let event_id = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    vec![
        ("/api/v1/workers", "get", "page_size", page_size.clone()),
        (
            "/api/v1/workers",
            "get",
            "page_token",
            json!({"maxLength": MAX_NAME_LEN}),
        ),
        ("/api/v1/tasks", "get", "page_size", page_size.clone()),
        ("/api/v1/tasks", "get", "page_token", numbered.clone()),
        ("/api/v1/tokens", "get", "page_size", page_size.clone()),
        (
            "/api/v1/tokens",
            "get",
            "page_token",
            json!({"maxLength": MAX_TOKEN_NAME_LEN}),
        ),
        ("/api/v1/audit", "get", "page_size", page_size),
        ("/api/v1/audit", "get", "page_token", numbered),
        ("/api/v1/tokens/{name}", "delete", "name", token),
        ("/api/v1/events", "get", "last_event_id", event_id.clone()),
        ("/api/v1/events", "get", "Last-Event-ID", event_id),
    ]
}

/// The two streams of Server-Sent Events: each event has a name (`event`), `data`, and
/// an increasing `id` where a client may resume. `/api/v1/events`: `worker`, `task` and
/// `sample` (the object as JSON), or `resync`; a followed log: `output` (id: the offset),
/// `error`, `end`.
fn events_schema(doc: &mut Value) {
    for (pointer, names) in [
        (
            "/paths/~1api~1v1~1events/get",
            json!(["worker", "task", "sample", "resync"]),
        ),
        (
            "/paths/~1api~1v1~1tasks~1{id}~1logs/get",
            json!(["output", "error", "end"]),
        ),
    ] {
        let content = doc
            .pointer_mut(&format!(
                "{pointer}/responses/200/content/text~1event-stream"
            ))
            .unwrap_or_else(|| panic!("{pointer} answers text/event-stream"));
        content["schema"] = json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"enum": names},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {"type": "string"},
                "retry": {"type": "integer"},
            },
        });
    }
}

/// The schema of `field` in component `schema` (inside its first `allOf` part, if any).
fn property<'a>(doc: &'a mut Value, schema: &str, field: &str) -> &'a mut Map<String, Value> {
    let component = &mut doc["components"]["schemas"][schema];
    let object = match component.get("allOf") {
        Some(_) => &mut component["allOf"][0],
        None => component,
    };
    object["properties"][field]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{schema}.{field} is in the document"))
}

/// The schema of parameter `name` of `method` on `path`.
fn parameter<'a>(
    doc: &'a mut Value,
    path: &str,
    method: &str,
    name: &str,
) -> &'a mut Map<String, Value> {
    doc["paths"][path][method]["parameters"]
        .as_array_mut()
        .and_then(|params| params.iter_mut().find(|p| p["name"] == name))
        .and_then(|p| p["schema"].as_object_mut())
        .unwrap_or_else(|| panic!("{method} {path} has parameter {name}"))
}

/// Merges `rules` into `schema` (objects field by field, the rest replaced).
fn merge(schema: &mut Map<String, Value>, rules: Value) {
    let Value::Object(rules) = rules else { return };
    for (key, value) in rules {
        match (schema.get_mut(&key), value) {
            (Some(Value::Object(inner)), Value::Object(more)) => {
                for (k, v) in more {
                    inner.insert(k, v);
                }
            }
            (_, value) => {
                schema.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule lands on a field or parameter the document has (a renamed field would
    /// panic here, not in a request), and says what the validation says.
    #[test]
    fn the_document_states_the_limits_the_validation_uses() {
        let doc = document();
        let cpu = &doc["components"]["schemas"]["SubmitBody"]["allOf"][0]["properties"]["cpu"];
        assert_eq!(cpu["maximum"], MAX_CPU);
        let env = &doc["components"]["schemas"]["SubmitBody"]["allOf"][0]["properties"]["env"];
        assert_eq!(env["propertyNames"]["pattern"], ENV_KEY_PATTERN);
        assert_eq!(env["maxProperties"], MAX_ENV_VARS);
        let labels = &doc["components"]["schemas"]["AddWorkerBody"]["properties"]["labels"];
        assert_eq!(labels["propertyNames"]["pattern"], LABEL_KEY_PATTERN);
        let events = &doc["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"];
        assert_eq!(events["properties"]["event"]["enum"][0], "worker");
    }
}
