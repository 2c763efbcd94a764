//! Who is calling. The master accepts three kinds of credential: the join token
//! (`<data-dir>/join-token`: Register and Heartbeat, nothing else), the bootstrap admin
//! token (`<data-dir>/token`), and named operator tokens with a role (`token create`),
//! kept only as SHA-256 hashes, in memory and in SQLite. A credential resolves to a
//! [`Caller`] (name, role, peer address) that every operation checks against one table
//! ([`authz`]) and that the audit log records. Each worker proves who it is with its own
//! secret ([`secret`]) and, with `--tls-client-ca`, a client certificate ([`mtls`]).

pub mod authz;
pub mod cluster;
pub mod mtls;
pub mod secret;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use tracing::warn;

use herd::auth::constant_time_eq;
use herd::domain::Role;
use herd::error::Error;

use crate::records::{AuditRow, SecretHash, TokenRow};
use crate::store::{Change, Store};

pub use self::secret::digest;

/// How often a token's `last_used` reaches SQLite at most: every call updates it in
/// memory, and a busy script must not cost a write per call.
const LAST_USED_PERSIST_MS: i64 = 60_000;

/// Name of the bootstrap admin token (`<data-dir>/token`) in the audit log and on tasks.
pub const BOOTSTRAP_NAME: &str = "admin";
/// Name of the master's own REPL in the audit log and on tasks.
pub const REPL_NAME: &str = "repl";
/// Name of every caller of a master started with `--insecure`.
pub const ANONYMOUS_NAME: &str = "anonymous";

/// Someone allowed to call Admin: who (the token's name), with which role, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The peer address, or "local" for the master's REPL.
    pub peer: String,
}

impl Caller {
    /// The master's own REPL: trusted (it runs in the master's process, on its terminal).
    pub fn repl() -> Caller {
        Caller {
            name: REPL_NAME.into(),
            role: Role::Admin,
            peer: "local".into(),
        }
    }

    /// An audit entry for `action` done by this caller now.
    pub fn audit(&self, action: authz::Op, target: &str, detail: &str) -> AuditRow {
        AuditRow {
            seq: 0,
            at_ms: herd::time::now_ms(),
            who: self.name.clone(),
            role: self.role.as_str().into(),
            action: action.name().into(),
            target: herd::text::clip(target).into_owned(),
            detail: clip_to(detail, 200),
            peer: self.peer.clone(),
        }
    }
}

fn clip_to(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// What a worker's token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerToken {
    /// The join token (or none needed: `--insecure`).
    Join,
    /// The bootstrap admin token, as workers held before the join token existed: accepted
    /// so an upgrade breaks nothing, and loudly told to switch.
    LegacyAdmin,
}

/// Why a call was refused before it reached any operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the master does not know (wrong or revoked).
    Unauthenticated(String),
    /// A valid token of the wrong kind for this service.
    PermissionDenied(String),
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> tonic::Status {
        match r {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

const NO_TOKEN: &str = "no token: pass --token, HERD_TOKEN or --token-file (the master keeps \
     the admin token in <data-dir>/token and the workers' join token in <data-dir>/join-token)";
const WRONG_TOKEN: &str = "wrong token (unknown or revoked): use the admin token in the \
     master's <data-dir>/token, an operator token made with `token create`, or for a worker \
     the join token in <data-dir>/join-token";

/// What a presented token is.
enum Kind {
    Join,
    Bootstrap,
    Named(String, Role),
    Unknown,
}

/// The named tokens, by name and by hash.
#[derive(Default)]
struct Named {
    by_name: BTreeMap<String, TokenRow>,
    by_hash: HashMap<SecretHash, String>,
    /// The `last_used` SQLite has, by name.
    persisted: HashMap<String, i64>,
}

/// Every credential the master accepts. Shared by the gRPC gates and the HTTP API.
pub struct Credentials {
    /// `--insecure`: no token is needed, and every caller is an admin.
    insecure: bool,
    admin: Option<SecretHash>,
    join: Option<SecretHash>,
    /// The cluster's bootstrap tokens where they are not this master's own (a PostgreSQL
    /// store: [`cluster`]).
    cluster_admin: Option<SecretHash>,
    cluster_join: Option<SecretHash>,
    named: Mutex<Named>,
    store: Store,
    /// Bumped at every revocation: open streams (followed logs, events) check whether
    /// theirs is still valid.
    revocations: watch::Sender<u64>,
}

impl Credentials {
    /// `admin` and `join` are the bootstrap tokens (both `None` with `--insecure`);
    /// `named` are the tokens SQLite holds.
    pub fn new(
        admin: Option<&str>,
        join: Option<&str>,
        named: Vec<TokenRow>,
        store: Store,
    ) -> Credentials {
        let mut tokens = Named::default();
        for row in named {
            tokens.by_hash.insert(row.hash, row.name.clone());
            tokens.persisted.insert(row.name.clone(), row.last_used_ms);
            tokens.by_name.insert(row.name.clone(), row);
        }
        Credentials {
            insecure: admin.is_none() && join.is_none(),
            admin: admin.map(digest),
            join: join.map(digest),
            cluster_admin: None,
            cluster_join: None,
            named: Mutex::new(tokens),
            store,
            revocations: watch::Sender::new(0),
        }
    }

    /// Accepts the cluster's bootstrap tokens too, where they differ from this master's.
    pub fn with_cluster_tokens(mut self, adopted: &cluster::Adopted) -> Credentials {
        if !self.insecure {
            self.cluster_admin = adopted.admin;
            self.cluster_join = adopted.join;
        }
        self
    }

    /// Resolves once `who`'s token is revoked (never for the bootstrap token, the REPL or
    /// an insecure master): a stream it opened ends then, not when it next calls.
    pub fn revoked(self: &Arc<Self>, who: &Caller) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        let name = who.name.clone();
        let mut changes = self.revocations.subscribe();
        async move {
            let named = !herd::domain::identity::RESERVED_TOKEN_NAMES.contains(&name.as_str());
            loop {
                if named && !this.named().by_name.contains_key(&name) {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    fn named(&self) -> std::sync::MutexGuard<'_, Named> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `token` is. Bootstrap tokens are compared in constant time; named ones are
    /// found by the hash of what was presented (timing can tell at most something about
    /// a SHA-256 hash, which gives nothing about a token).
    fn kind(&self, token: &str) -> Kind {
        let hash = digest(token.trim());
        let is = |known: Option<SecretHash>| known.is_some_and(|h| constant_time_eq(&h, &hash));
        if is(self.admin) | is(self.cluster_admin) {
            return Kind::Bootstrap;
        }
        if is(self.join) | is(self.cluster_join) {
            return Kind::Join;
        }
        let mut named = self.named();
        let Some(name) = named.by_hash.get(&hash).cloned() else {
            return Kind::Unknown;
        };
        let now = herd::time::now_ms();
        let row = named.by_name.get_mut(&name).expect("indexed by hash");
        row.last_used_ms = now;
        let role = row.role;
        let persisted = named.persisted.get(&name).copied().unwrap_or(0);
        if now - persisted >= LAST_USED_PERSIST_MS {
            named.persisted.insert(name.clone(), now);
            self.store.save(Change::TokenUsed {
                name: name.clone(),
                at_ms: now,
            });
        }
        Kind::Named(name, role)
    }

    /// The caller of an Admin call (or an HTTP API call) presenting `bearer`.
    pub fn operator(&self, bearer: Option<&str>, peer: String) -> Result<Caller, Refusal> {
        if self.insecure {
            return Ok(Caller {
                name: ANONYMOUS_NAME.into(),
                role: Role::Admin,
                peer,
            });
        }
        let Some(token) = bearer else {
            return Err(Refusal::Unauthenticated(NO_TOKEN.into()));
        };
        match self.kind(token) {
            Kind::Bootstrap => Ok(Caller {
                name: BOOTSTRAP_NAME.into(),
                role: Role::Admin,
                peer,
            }),
            Kind::Named(name, role) => Ok(Caller { name, role, peer }),
            Kind::Join => Err(Refusal::PermissionDenied(
                "this is the cluster's join token: it lets workers register and heartbeat, \
                 nothing else; Admin calls need an operator token (the master's \
                 <data-dir>/token, or one made with `token create NAME --role ROLE`)"
                    .into(),
            )),
            Kind::Unknown => Err(Refusal::Unauthenticated(WRONG_TOKEN.into())),
        }
    }

    /// What a Register or Heartbeat call presenting `bearer` may be.
    pub fn worker(&self, bearer: Option<&str>) -> Result<WorkerToken, Refusal> {
        if self.insecure {
            return Ok(WorkerToken::Join);
        }
        let Some(token) = bearer else {
            return Err(Refusal::Unauthenticated(NO_TOKEN.into()));
        };
        match self.kind(token) {
            Kind::Join => Ok(WorkerToken::Join),
            Kind::Bootstrap => Ok(WorkerToken::LegacyAdmin),
            Kind::Named(name, role) => Err(Refusal::PermissionDenied(format!(
                "this is the operator token '{name}' ({role}): workers register with the \
                 join token, in the master's <data-dir>/join-token"
            ))),
            Kind::Unknown => Err(Refusal::Unauthenticated(WRONG_TOKEN.into())),
        }
    }
}

/// Logs, loudly, a worker that presented the admin token instead of the join token.
pub fn warn_legacy(worker: &str, peer: Option<std::net::SocketAddr>) {
    warn!(
        worker,
        peer = %herd::text::Maybe(&peer),
        "THIS WORKER PRESENTED THE ADMIN TOKEN (<data-dir>/token). It is accepted so that an \
         upgrade breaks nothing, but a worker machine must not hold the admin token: give it \
         the join token instead (<data-dir>/join-token, with --token-file or HERD_TOKEN) and \
         restart it"
    );
}

/// Tokens by name for `token list`, and the changes `token create`/`token revoke` make.
impl Credentials {
    /// At most `limit` tokens named after `after`, and whether there are more.
    pub fn page(&self, after: &str, limit: usize) -> (Vec<TokenRow>, bool) {
        let named = self.named();
        let mut rows = named
            .by_name
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, row)| row.clone());
        let page: Vec<TokenRow> = rows.by_ref().take(limit).collect();
        (page, rows.next().is_some())
    }

    /// Refuses a name that is taken, or a table that is full.
    pub fn check_new(&self, name: &str) -> Result<(), Error> {
        let named = self.named();
        if named.by_name.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "a token named '{name}' exists: revoke it first, or choose another name"
            )));
        }
        if named.by_name.len() >= herd::domain::identity::MAX_TOKENS {
            return Err(Error::FailedPrecondition(format!(
                "there are {} tokens, the most a master keeps: revoke some first",
                named.by_name.len()
            )));
        }
        Ok(())
    }

    /// Accepts a token from now on (once it is stored).
    pub fn insert(&self, row: TokenRow) {
        let mut named = self.named();
        named.by_hash.insert(row.hash, row.name.clone());
        named.persisted.insert(row.name.clone(), row.last_used_ms);
        named.by_name.insert(row.name.clone(), row);
    }

    /// The token named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<TokenRow> {
        self.named().by_name.get(name).cloned()
    }

    /// Refuses a token from now on.
    pub fn remove(&self, name: &str) -> Option<TokenRow> {
        let mut named = self.named();
        let row = named.by_name.remove(name)?;
        named.by_hash.remove(&row.hash);
        named.persisted.remove(name);
        drop(named);
        self.revocations.send_modify(|n| *n += 1);
        Some(row)
    }
}
