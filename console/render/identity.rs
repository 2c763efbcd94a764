//! How tokens and the audit log look: `token list`, `token create`, `audit`.

use herd::pb;
use herd::time::{ago, now_ms};

use super::table_of;

/// The `token list` table (never a token itself: the master does not have them).
pub fn tokens(list: &[pb::TokenInfo]) -> String {
    if list.is_empty() {
        return "no named tokens (the admin token is the master's <data-dir>/token; make \
                others with 'token create NAME --role ROLE')"
            .into();
    }
    let now = now_ms();
    let rows = list
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.clone(),
                ago(t.created_ms, now),
                ago(t.last_used_ms, now),
            ]
        })
        .collect();
    table_of(&["NAME", "ROLE", "CREATED", "LAST USED"], rows)
}

/// What `token create` prints: the token on a line of its own, and that it is shown once.
pub fn created(made: &pb::CreateTokenResponse) -> String {
    let info = made.info.clone().unwrap_or_default();
    format!(
        "{}\ntoken '{}' ({}) created; it is shown only this once: keep it safe (the master \
         keeps only its hash)",
        made.token, info.name, info.role
    )
}

/// The `audit` table, newest first.
pub fn audit(list: &[pb::AuditEntry]) -> String {
    if list.is_empty() {
        return "no audit entries".into();
    }
    let rows = list
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                herd::time::format_ms(e.at_ms),
                e.who.clone(),
                e.role.clone(),
                e.action.clone(),
                e.target.clone(),
                e.peer.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    table_of(
        &[
            "SEQ", "WHEN", "WHO", "ROLE", "ACTION", "TARGET", "FROM", "DETAIL",
        ],
        rows,
    )
}
