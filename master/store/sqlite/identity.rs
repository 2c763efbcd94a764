//! The identity tables of `herd.db`: named operator tokens (their hashes only) and the
//! audit log of Admin changes.

use rusqlite::{Connection, Transaction, params};

use herd::domain::Role;

use super::fault::Result;

use crate::records::{AuditRow, TokenRow};

pub fn load_tokens(conn: &Connection) -> Result<Vec<TokenRow>> {
    let mut stmt =
        conn.prepare("SELECT name, role, hash, created_at, last_used FROM tokens ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, role, hash, created_ms, last_used_ms) = row?;
        // A row this master cannot read grants nothing.
        let (Some(role), Ok(hash)) = (Role::parse(&role), hash.try_into()) else {
            tracing::error!(token = %name, "a token in herd.db is unreadable; it is ignored");
            continue;
        };
        out.push(TokenRow {
            name,
            role,
            hash,
            created_ms,
            last_used_ms,
        });
    }
    Ok(out)
}

pub fn insert_token(tx: &Transaction<'_>, row: &TokenRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO tokens (name, role, hash, created_at, last_used) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        row.name,
        row.role.as_str(),
        &row.hash[..],
        row.created_ms,
        row.last_used_ms
    ])?;
    Ok(())
}

pub fn revoke_token(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM tokens WHERE name = ?1")?
        .execute([name])?;
    Ok(())
}

pub fn token_used(tx: &Transaction<'_>, name: &str, at_ms: i64) -> Result<()> {
    tx.prepare_cached("UPDATE tokens SET last_used = ?2 WHERE name = ?1")?
        .execute(params![name, at_ms])?;
    Ok(())
}

pub fn insert_audit(tx: &Transaction<'_>, row: &AuditRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit (at, who, role, action, target, detail, peer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        row.at_ms, row.who, row.role, row.action, row.target, row.detail, row.peer
    ])?;
    Ok(())
}

/// Audit entries numbered below `before` (all with `None`), newest first.
pub fn audit_page(conn: &Connection, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>> {
    let before = before
        .map(|b| b.min(i64::MAX as u64) as i64)
        .unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, who, role, action, target, detail, peer FROM audit
         WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before, limit as i64], |r| {
        Ok(AuditRow {
            seq: r.get::<_, i64>(0)? as u64,
            at_ms: r.get(1)?,
            who: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            detail: r.get(6)?,
            peer: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
