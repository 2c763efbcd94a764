//! The JSON views of tokens, worker secrets and audit entries.

use serde_json::{Value, json};

use crate::pb;

pub fn token(t: &pb::TokenInfo) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "created_ms": t.created_ms,
        "last_used_ms": t.last_used_ms,
    })
}

pub fn tokens(list: &[pb::TokenInfo]) -> Value {
    Value::Array(list.iter().map(token).collect())
}

/// The one answer that carries a token.
pub fn created(made: &pb::CreateTokenResponse) -> Value {
    let mut value = token(&made.info.clone().unwrap_or_default());
    value["token"] = Value::from(made.token.clone());
    value
}

pub fn entry(e: &pb::AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "who": e.who,
        "role": e.role,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
        "peer": e.peer,
    })
}

pub fn audit(list: &[pb::AuditEntry]) -> Value {
    Value::Array(list.iter().map(entry).collect())
}
