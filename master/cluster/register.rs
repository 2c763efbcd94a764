//! Registration: a new name gets an id and a secret; a known name is taken again only
//! with its secret, so two processes can never take turns as one worker.

use std::net::SocketAddr;

use tracing::{info, warn};

use herd::domain::WorkerSpec;
use herd::error::Error;

use super::{Cluster, Registered};
use crate::identity::secret;
use crate::records::SecretHash;
use crate::workers::KnownWorker;

impl Cluster {
    /// Registers a worker, or re-registers it by name keeping its id. A known name is
    /// only taken with its secret: anyone else gets ALREADY_EXISTS, and the worker holding
    /// it is not touched. `fresh` is a new secret (and its hash), issued when the name is
    /// new or has none yet.
    pub fn register(
        &self,
        spec: WorkerSpec,
        presented: &str,
        peer: Option<SocketAddr>,
        fresh: (String, SecretHash),
    ) -> Result<Registered, Error> {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let liveness = inner.liveness;
        if let Some(id) = inner.workers.id_of(&spec.name).map(str::to_string) {
            let entry = inner
                .workers
                .get_mut(&id)
                .expect("by name points at a worker");
            let first = entry.presence.pending;
            let issued = match &entry.secret_hash {
                Some(kept) if secret::matches(kept, presented) => None,
                Some(_) => return Err(name_taken(entry, presented, peer)),
                None => {
                    if !first {
                        warn!(worker = %spec.name, %id, peer = %herd::text::Maybe(&peer),
                              "this worker had no secret (known from before secrets): issuing one");
                    }
                    entry.secret_hash = Some(fresh.1);
                    Some(fresh.0)
                }
            };
            entry.describe(spec);
            entry.presence.pending = false;
            entry.presence.removed = false;
            entry.presence.last_seen = now;
            entry.last_peer = peer;
            if first {
                entry.registered_at_ms = herd::time::now_ms();
                entry.dirty = true;
                entry.observe(&liveness, now, "registered", &inner.events);
                info!(worker = %entry.spec.name, %id, peer = %herd::text::Maybe(&peer), labels = entry.added_labels.len(),
                      "pre-registered worker registered, taking its id");
            } else {
                entry.observe(&liveness, now, "re-registered", &inner.events);
                info!(worker = %entry.spec.name, %id, peer = %herd::text::Maybe(&peer), "worker re-registered, keeping its id");
            }
            return Ok(Registered {
                reregistered: !first,
                record: entry.record(),
                secret: issued,
                id,
            });
        }
        let id = inner.workers.new_id();
        let mut entry = KnownWorker::new(id.clone(), spec, now);
        entry.secret_hash = Some(fresh.1);
        entry.last_peer = peer;
        info!(worker = %entry.spec.name, %id, peer = %herd::text::Maybe(&peer), cpu = entry.spec.capacity.cpu,
              memory_gb = entry.spec.capacity.memory_gb, gpu = entry.spec.capacity.gpu,
              runtime = entry.spec.runtime.map(|r| r.as_str()).unwrap_or("none"),
              isolation = %entry.spec.isolation, "worker registered");
        let record = entry.record();
        inner.events.worker(entry.info(&inner.liveness, now));
        inner.workers.insert(entry);
        Ok(Registered {
            id,
            reregistered: false,
            secret: Some(fresh.0),
            record,
        })
    }
}

/// The refusal of a registration of a name that belongs to another worker; logged, since
/// it is either a mistake (two machines with one name) or an attempt to take a worker's
/// place.
fn name_taken(entry: &KnownWorker, presented: &str, peer: Option<SocketAddr>) -> Error {
    let connected = entry.session.as_ref().and_then(|s| s.peer);
    warn!(worker = %entry.spec.name, id = %entry.id, attempt_from = %herd::text::Maybe(&peer), connected = %herd::text::Maybe(&connected),
          secret_given = !presented.is_empty(),
          "refused a registration: this name belongs to another worker, and its secret was not presented");
    if entry.presence.pending {
        return Error::AlreadyExists(format!(
            "worker '{}' ({}) was pre-registered with a secret and {}: start this machine \
             with --worker-secret (or HERD_WORKER_SECRET) as `worker add --secret` or \
             `worker secret {}` printed it",
            entry.spec.name,
            entry.id,
            if presented.is_empty() {
                "none was presented"
            } else {
                "this is not it"
            },
            entry.spec.name
        ));
    }
    let whose = if presented.is_empty() {
        "this process did not present its secret"
    } else {
        "this process presented a secret that is not its"
    };
    let place = match (connected, entry.last_peer) {
        (Some(addr), _) => format!("is connected from {addr}"),
        (None, Some(addr)) => format!("is not connected (last from {addr})"),
        (None, None) => "is not connected".to_string(),
    };
    Error::AlreadyExists(format!(
        "worker '{}' ({}) already exists and {place}; {whose}. Give this machine another \
         --name, or if that worker is gone for good, `worker forget {}` frees the name",
        entry.spec.name, entry.id, entry.spec.name
    ))
}
