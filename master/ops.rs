//! The operations operators call — one implementation each, behind the gRPC Admin service
//! (`admin.rs`), the master's own REPL (through it) and the HTTP API: lists in pages that
//! merge what is in memory with what only SQLite keeps, lookups, and every change, each
//! answered only once it is durable. Each starts by checking the caller's role against
//! the one table ([`crate::identity::authz`]); each change is stored with its audit entry.

use clap::ValueEnum;
use prost::Message;

use herd::config::SchedulerKind;
use herd::domain::{TaskSpec, TaskState};
use herd::error::Error;
use herd::pb;

use crate::identity::Caller;
use crate::identity::authz::Op;
use crate::records::{TaskFilter, task_number};
use crate::service::Master;
use crate::store::Write;
use crate::tasks::Lookup;

/// Items in a page when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;
/// Most items in a page.
pub const MAX_PAGE: usize = 1000;
/// Most bytes of items in a page, far below the 1 MiB message limit whatever the items
/// hold (a task may carry a 64 KiB command).
pub const MAX_PAGE_BYTES: usize = 512 * 1024;

fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

impl Master {
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
        let (workers, more) = self.registry.list(
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
        self.registry.get(worker)
    }

    /// Stores the task (with who submitted it) before its id is handed out: an
    /// acknowledged task survives kill -9.
    pub async fn submit(
        &self,
        who: &Caller,
        spec: Option<pb::TaskSpec>,
    ) -> Result<pb::TaskInfo, Error> {
        who.may(Op::SubmitTask)?;
        let spec = spec.ok_or_else(|| Error::invalid("SubmitTaskRequest has no task spec"))?;
        let mut task = self.registry.new_task(TaskSpec::try_from(spec)?);
        task.submitted_by = who.name.clone();
        let command = task.spec.command.clone().unwrap_or_default();
        let what = match &task.spec.image {
            Some(image) => format!("[{image}] {command}"),
            None => command,
        };
        let audit = who.audit(Op::SubmitTask, &task.id, &what);
        let id = task.id.clone();
        let stored = self.store.begin(Write::Audited {
            change: Box::new(Write::Task(Box::new(task.clone()))),
            audit: Box::new(audit),
        });
        let info = self.registry.enqueue(task);
        self.acknowledge(stored, &[id]).await?;
        Ok(info)
    }

    /// Waits for the rows of tasks just submitted, which were queued (and placed) while
    /// they were being written, so a task and its placement share one commit; the
    /// submission is answered only once they are stored. A placement is sent to its
    /// worker only after its own commit, which fails without the task's row: if the rows
    /// cannot be stored, no worker ever hears of the tasks, and they are withdrawn.
    async fn acknowledge(
        &self,
        stored: impl Future<Output = Result<(), Error>>,
        ids: &[String],
    ) -> Result<(), Error> {
        if let Err(err) = stored.await {
            self.registry.withdraw(ids);
            return Err(err);
        }
        Ok(())
    }

    /// Stores a batch in one transaction before any id is handed out: all the tasks, or
    /// (when one is wrong, or the write fails) none.
    /// The batch is one audit entry, naming its first and last task.
    pub async fn submit_batch(
        &self,
        who: &Caller,
        req: pb::SubmitTasksRequest,
    ) -> Result<pb::SubmitTasksResponse, Error> {
        who.may(Op::SubmitTask)?;
        let specs = herd::domain::run::batch(req)?;
        let mut tasks = self.registry.new_tasks(specs);
        for task in &mut tasks {
            task.submitted_by = who.name.clone();
        }
        let ids = match (tasks.first(), tasks.last()) {
            (Some(first), Some(last)) => format!("{}..{}", first.id, last.id),
            _ => String::new(),
        };
        let audit = who.audit(Op::SubmitTask, &ids, &format!("{} tasks", tasks.len()));
        let stored = self.store.begin(Write::Audited {
            change: Box::new(Write::Tasks(tasks.clone())),
            audit: Box::new(audit),
        });
        let task_ids = self.registry.enqueue_all(tasks);
        self.acknowledge(stored, &task_ids).await?;
        Ok(pb::SubmitTasksResponse { task_ids })
    }

    /// A page of tasks, newest first: the unfinished (and just finished) ones from memory
    /// merged with the finished ones from SQLite.
    pub async fn list_tasks(
        &self,
        who: &Caller,
        req: pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, Error> {
        who.may(Op::ListTasks)?;
        let state = match req.state() {
            pb::TaskState::Unspecified => None,
            other => Some(TaskState::try_from(other)?),
        };
        let worker_id = match req.worker.as_str() {
            "" => None,
            w => Some(self.registry.resolve_worker(w)?),
        };
        let before = match req.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<u64>().map_err(|_| {
                Error::invalid(format!(
                    "page_token '{}' is not one this master gave out",
                    herd::text::clip(token)
                ))
            })?),
        };
        let filter = TaskFilter {
            state,
            worker_id,
            since_ms: req.submitted_since_ms,
        };
        let limit = page_size(req.page_size);
        let (mut page, next) = self.registry.task_page(&filter, before, limit);
        let stored = self
            .store
            .finished_page(filter, before.unwrap_or(next), limit)
            .await?;
        let stored_numbers: Vec<u64> = stored
            .iter()
            .map(|t| task_number(&t.id).unwrap_or(0))
            .collect();
        let infos = self.registry.task_infos(&stored);
        // A task that finished between the two reads is in both: memory's copy wins.
        for (n, info) in stored_numbers.into_iter().zip(infos) {
            if !page.iter().any(|(m, _)| *m == n) {
                page.push((n, info));
            }
        }
        page.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let candidates = page.len();
        let mut tasks = Vec::new();
        let mut bytes = 0;
        let mut last = 0;
        for (n, info) in page {
            bytes += info.encoded_len() + 8;
            if tasks.len() >= limit || (!tasks.is_empty() && bytes > MAX_PAGE_BYTES) {
                break;
            }
            last = n;
            tasks.push(info);
        }
        let more = tasks.len() < candidates || tasks.len() == limit;
        Ok(pb::ListTasksResponse {
            next_page_token: if more && last > 1 {
                last.to_string()
            } else {
                String::new()
            },
            tasks,
        })
    }

    pub async fn get_task(&self, who: &Caller, id: &str) -> Result<pb::TaskInfo, Error> {
        who.may(Op::GetTask)?;
        self.find_task(id).await
    }

    /// One task by id, from memory or SQLite (for callers already checked).
    pub async fn find_task(&self, id: &str) -> Result<pb::TaskInfo, Error> {
        match self.registry.task(id)? {
            Lookup::Here(info) => Ok(info),
            Lookup::Stored => {
                let task = self.store.task(id).await?.ok_or_else(|| {
                    Error::not_found(format!("no task '{}' in the store", herd::text::clip(id)))
                })?;
                Ok(self.registry.task_infos(&[task]).remove(0))
            }
        }
    }

    /// "Cancelled" is said only once it is stored (the audit entry after it).
    pub async fn cancel(&self, who: &Caller, id: &str) -> Result<pb::TaskInfo, Error> {
        who.may(Op::CancelTask)?;
        let info = match self.registry.cancel(id) {
            Ok(info) => info,
            // Ended and no longer in memory (a tick after its end was stored): say how it
            // ended, as for one that still is.
            Err(Error::FailedPrecondition(_))
                if matches!(self.registry.task(id), Ok(Lookup::Stored)) =>
            {
                let ended = TaskState::try_from(self.find_task(id).await?.state())?;
                return Err(Error::FailedPrecondition(format!(
                    "task {id} already {ended}; nothing to cancel"
                )));
            }
            Err(err) => return Err(err),
        };
        let audit = who.audit(Op::CancelTask, &info.id, &info.reason);
        self.store.write(Write::Audit(Box::new(audit))).await?;
        Ok(info)
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
        let kind = self.registry.scheduler(to);
        if to.is_some() {
            let audit = who.audit(Op::SwitchScheduler, &scheduler_name(kind), "");
            self.store
                .write(Write::Audited {
                    change: Box::new(Write::Setting {
                        key: "scheduler".into(),
                        value: scheduler_name(kind),
                    }),
                    audit: Box::new(audit),
                })
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
        let record = self.registry.drain(worker, drain)?;
        let id = record.id.clone();
        let audit = who.audit(op, &record.spec.name, &record.id);
        self.store
            .write(Write::Audited {
                change: Box::new(Write::Draining {
                    id: record.id,
                    draining: drain,
                }),
                audit: Box::new(audit),
            })
            .await?;
        self.registry.get(&id)
    }

    /// Pre-registers a worker; acknowledged once stored.
    pub async fn add_worker(
        &self,
        who: &Caller,
        request: pb::AddWorkerRequest,
    ) -> Result<pb::WorkerInfo, Error> {
        who.may(Op::AddWorker)?;
        let record = self.registry.add_worker(request.try_into()?)?;
        let id = record.id.clone();
        let labels: Vec<String> = record
            .added_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let audit = who.audit(Op::AddWorker, &record.spec.name, &labels.join(" "));
        self.store
            .write(Write::Audited {
                change: Box::new(Write::Worker(Box::new(record))),
                audit: Box::new(audit),
            })
            .await?;
        self.registry.get(&id)
    }

    /// Forgets a worker that is not Active, in memory and in SQLite: its name (and its
    /// secret) is free, and the next registration of the name is a new identity.
    pub async fn forget(&self, who: &Caller, worker: &str) -> Result<pb::WorkerInfo, Error> {
        who.may(Op::ForgetWorker)?;
        let info = self.registry.forget(worker)?;
        let name = info.description.as_ref().map(|d| d.name.as_str());
        let audit = who.audit(Op::ForgetWorker, name.unwrap_or_default(), &info.id);
        self.store
            .write(Write::Audited {
                change: Box::new(Write::ForgetWorker {
                    id: info.id.clone(),
                }),
                audit: Box::new(audit),
            })
            .await?;
        Ok(info)
    }

    pub fn summary(&self, who: &Caller) -> Result<pb::ClusterSummary, Error> {
        who.may(Op::Summary)?;
        let summary = self.registry.summary();
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
        })
    }
}

pub fn scheduler_name(kind: SchedulerKind) -> String {
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
