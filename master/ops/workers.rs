//! Worker operations: list, look up, pre-register, drain, forget, the scheduler choice
//! and the cluster summary.

use clap::ValueEnum;

use herd::config::SchedulerKind;
use herd::error::Error;
use herd::pb;

use super::{MAX_PAGE_BYTES, page_size, scheduler_name};
use crate::app::App;
use crate::cluster::Registered;
use crate::identity::Caller;
use crate::identity::authz::Op;
use crate::identity::secret;
use crate::store::Change;

impl App {
    /// Registers a worker (or again, by name, keeping its id). The id and the secret's
    /// hash are handed out only once stored: a restarted master knows them.
    pub async fn register(
        &self,
        spec: herd::domain::WorkerSpec,
        presented_secret: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Registered, Error> {
        let registered = self
            .cluster
            .register(spec, presented_secret, peer, secret::issue()?)?;
        self.store
            .commit(Change::Worker(Box::new(registered.record.clone())))
            .await?;
        Ok(registered)
    }

    pub fn list_workers(
        &self,
        who: &Caller,
        req: pb::ListWorkersRequest,
    ) -> Result<pb::ListWorkersResponse, Error> {
        who.may(Op::ListWorkers)?;
        // The token is the last name of the page before (the next page starts after it).
        if req.page_token.chars().count() > herd::domain::MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "page_token '{}' is not one this master gave out",
                herd::text::clip(&req.page_token)
            )));
        }
        let (workers, more) = self.cluster.list(
            req.all,
            &req.page_token,
            page_size(req.page_size),
            MAX_PAGE_BYTES,
        );
        let next_page_token = match (more, workers.last()) {
            (true, Some(last)) => last
                .description
                .as_ref()
                .map(|d| d.name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        Ok(pb::ListWorkersResponse {
            workers,
            next_page_token,
        })
    }

    pub fn get_worker(&self, who: &Caller, worker: &str) -> Result<pb::WorkerInfo, Error> {
        who.may(Op::GetWorker)?;
        if worker.is_empty() {
            return Err(Error::invalid("give a worker id or name"));
        }
        self.cluster.get(worker)
    }

    /// Shows or switches the policy; a switch is kept across restarts.
    pub async fn scheduler(
        &self,
        who: &Caller,
        name: &str,
    ) -> Result<pb::SchedulerResponse, Error> {
        who.may(if name.is_empty() {
            Op::ShowScheduler
        } else {
            Op::SwitchScheduler
        })?;
        let to = if name.is_empty() {
            None
        } else {
            Some(SchedulerKind::from_str(name, false).map_err(|_| {
                Error::invalid(format!(
                    "unknown scheduler '{}': use round-robin, resource-aware or bin-pack",
                    herd::text::clip(name)
                ))
            })?)
        };
        let kind = self.cluster.scheduler(to);
        if to.is_some() {
            let audit = who.audit(Op::SwitchScheduler, &scheduler_name(kind), "");
            self.store
                .commit(
                    Change::Setting {
                        key: "scheduler".into(),
                        value: scheduler_name(kind),
                    }
                    .audited(audit),
                )
                .await?;
        }
        Ok(pb::SchedulerResponse {
            name: scheduler_name(kind),
        })
    }

    /// Acknowledged only once stored: a drain survives a restart.
    pub async fn drain(
        &self,
        who: &Caller,
        worker: &str,
        drain: bool,
    ) -> Result<pb::WorkerInfo, Error> {
        let op = if drain { Op::Drain } else { Op::Undrain };
        who.may(op)?;
        let record = self.cluster.drain(worker, drain)?;
        let id = record.id.clone();
        let audit = who.audit(op, &record.spec.name, &record.id);
        self.store
            .commit(
                Change::Draining {
                    id: record.id,
                    draining: drain,
                }
                .audited(audit),
            )
            .await?;
        self.cluster.get(&id)
    }

    /// Pre-registers a worker; acknowledged once stored.
    pub async fn add_worker(
        &self,
        who: &Caller,
        request: pb::AddWorkerRequest,
    ) -> Result<pb::WorkerInfo, Error> {
        who.may(Op::AddWorker)?;
        let record = self.cluster.add_worker(request.try_into()?)?;
        let id = record.id.clone();
        let labels: Vec<String> = record
            .added_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let audit = who.audit(Op::AddWorker, &record.spec.name, &labels.join(" "));
        self.store
            .commit(Change::Worker(Box::new(record)).audited(audit))
            .await?;
        self.cluster.get(&id)
    }

    /// Forgets a worker that is not Active, in memory and in SQLite: its name (and its
    /// secret) is free, and the next registration of the name is a new identity.
    pub async fn forget(&self, who: &Caller, worker: &str) -> Result<pb::WorkerInfo, Error> {
        who.may(Op::ForgetWorker)?;
        let info = self.cluster.forget(worker)?;
        let name = info.description.as_ref().map(|d| d.name.as_str());
        let audit = who.audit(Op::ForgetWorker, name.unwrap_or_default(), &info.id);
        self.store
            .commit(
                Change::ForgetWorker {
                    id: info.id.clone(),
                }
                .audited(audit),
            )
            .await?;
        Ok(info)
    }

    /// The cluster's counts, and the masters that share its store.
    pub async fn summary(&self, who: &Caller) -> Result<pb::ClusterSummary, Error> {
        who.may(Op::Summary)?;
        let summary = self.cluster.summary();
        let counts = |list: Vec<(&str, usize)>| {
            list.into_iter()
                .map(|(state, n)| pb::StateCount {
                    state: state.to_string(),
                    count: n as u32,
                })
                .collect()
        };
        Ok(pb::ClusterSummary {
            workers: counts(summary.workers),
            tasks: counts(summary.tasks),
            queue_length: summary.queued as u32,
            scheduler: scheduler_name(summary.scheduler),
            masters: self.store.masters().await?,
        })
    }
}
