//! The identity operations (through the gRPC Admin service and the HTTP API): named
//! operator tokens and the audit log. A token is shown once, in the answer to its
//! creation; the master keeps only its hash, and a revoked token is refused from the
//! moment the revocation is answered.

use herd::domain::identity::{NewToken, validate_token_name};
use herd::error::Error;
use herd::pb;

use super::{bad_page_token, numbered_page_token, page_size};
use crate::app::App;
use crate::identity::authz::Op;
use crate::identity::{Caller, secret};
use crate::records::TokenRow;
use crate::store::Change;

impl App {
    /// Makes a named token: stored (hashed, with its audit entry) before it is answered.
    pub async fn create_token(
        &self,
        who: &Caller,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, Error> {
        who.may(Op::CreateToken)?;
        let new = NewToken::try_from(req)?;
        self.credentials.check_new(&new.name)?;
        let (token, hash) = secret::issue()?;
        let row = TokenRow {
            name: new.name.clone(),
            role: new.role,
            hash,
            created_ms: herd::time::now_ms(),
            last_used_ms: 0,
        };
        let audit = who.audit(Op::CreateToken, &new.name, new.role.as_str());
        // Two creations of one name at once: the table's primary key refuses the second.
        self.store
            .commit(Change::TokenCreate(row.clone()).audited(audit))
            .await
            .map_err(|err| match err {
                Error::Storage(e) if e.contains("UNIQUE") => Error::AlreadyExists(format!(
                    "a token named '{}' exists: revoke it first, or choose another name",
                    new.name
                )),
                other => other,
            })?;
        self.credentials.insert(row.clone());
        tracing::info!(token = %row.name, role = %row.role, by = %who.name, "token created");
        Ok(pb::CreateTokenResponse {
            info: Some(row.info()),
            token,
        })
    }

    /// Named tokens by name; never the tokens themselves.
    pub fn list_tokens(
        &self,
        who: &Caller,
        req: pb::ListTokensRequest,
    ) -> Result<pb::ListTokensResponse, Error> {
        who.may(Op::ListTokens)?;
        if req.page_token.chars().count() > herd::domain::identity::MAX_TOKEN_NAME_LEN {
            return Err(bad_page_token(&req.page_token));
        }
        let (rows, more) = self
            .credentials
            .page(&req.page_token, page_size(req.page_size));
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        Ok(pb::ListTokensResponse {
            tokens: rows.iter().map(TokenRow::info).collect(),
            next_page_token,
        })
    }

    /// Revokes a named token: once stored, it is refused (before this answers).
    pub async fn revoke_token(
        &self,
        who: &Caller,
        req: pb::RevokeTokenRequest,
    ) -> Result<pb::TokenInfo, Error> {
        who.may(Op::RevokeToken)?;
        validate_token_name(&req.name)?;
        let row = self.credentials.get(&req.name).ok_or_else(|| {
            Error::not_found(format!(
                "no token named '{}': 'token list' shows them",
                req.name
            ))
        })?;
        let audit = who.audit(Op::RevokeToken, &row.name, row.role.as_str());
        self.store
            .commit(
                Change::TokenRevoke {
                    name: row.name.clone(),
                }
                .audited(audit),
            )
            .await?;
        self.credentials.remove(&row.name);
        tracing::info!(token = %row.name, by = %who.name, "token revoked");
        Ok(row.info())
    }

    /// A new secret for a worker that is not Active, stored (hashed) before it is shown.
    pub async fn issue_worker_secret(
        &self,
        who: &Caller,
        req: pb::IssueWorkerSecretRequest,
    ) -> Result<pb::IssueWorkerSecretResponse, Error> {
        who.may(Op::IssueWorkerSecret)?;
        if req.worker.is_empty() {
            return Err(Error::invalid("give a worker id or name"));
        }
        let (secret, hash) = secret::issue()?;
        let record = self.cluster.set_secret(&req.worker, hash)?;
        let id = record.id.clone();
        let audit = who.audit(Op::IssueWorkerSecret, &record.spec.name, &id);
        self.store
            .commit(Change::Worker(Box::new(record)).audited(audit))
            .await?;
        Ok(pb::IssueWorkerSecretResponse {
            worker: Some(self.cluster.get(&id)?),
            worker_secret: secret,
        })
    }

    /// A page of the audit log, newest first.
    pub async fn list_audit(
        &self,
        who: &Caller,
        req: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse, Error> {
        who.may(Op::ListAudit)?;
        let before = numbered_page_token(&req.page_token)?;
        let limit = page_size(req.page_size);
        let rows = self.store.audit_page(before, limit).await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == limit && last.seq > 1 => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(pb::ListAuditResponse {
            entries: rows.iter().map(|r| r.entry()).collect(),
            next_page_token,
        })
    }
}
