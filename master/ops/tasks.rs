//! Task operations: submit (one, or a batch in one transaction), list, look up, cancel.
//! A submission is answered only once its rows are stored; its placement may share the
//! commit.

use prost::Message;

use herd::domain::{TaskSpec, TaskState};
use herd::error::Error;
use herd::pb;

use super::{MAX_PAGE_BYTES, page_size};
use crate::app::App;
use crate::identity::Caller;
use crate::identity::authz::Op;
use crate::records::{TaskFilter, task_number};
use crate::store::Change;
use crate::tasks::Lookup;

impl App {
    /// Stores the task (with who submitted it) before its id is handed out: an
    /// acknowledged task survives kill -9.
    pub async fn submit(
        &self,
        who: &Caller,
        spec: Option<pb::TaskSpec>,
    ) -> Result<pb::TaskInfo, Error> {
        who.may(Op::SubmitTask)?;
        let spec = spec.ok_or_else(|| Error::invalid("SubmitTaskRequest has no task spec"))?;
        let mut task = self.cluster.new_task(TaskSpec::try_from(spec)?);
        task.submitted_by = who.name.clone();
        let command = task.spec.command.clone().unwrap_or_default();
        let what = match &task.spec.image {
            Some(image) => format!("[{image}] {command}"),
            None => command,
        };
        let audit = who.audit(Op::SubmitTask, &task.id, &what);
        let id = task.id.clone();
        let stored = self
            .store
            .commit(Change::Task(Box::new(task.clone())).audited(audit));
        let info = self.cluster.enqueue(task);
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
            self.cluster.withdraw(ids);
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
        let mut tasks = self.cluster.new_tasks(specs);
        for task in &mut tasks {
            task.submitted_by = who.name.clone();
        }
        let ids = match (tasks.first(), tasks.last()) {
            (Some(first), Some(last)) => format!("{}..{}", first.id, last.id),
            _ => String::new(),
        };
        let audit = who.audit(Op::SubmitTask, &ids, &format!("{} tasks", tasks.len()));
        let stored = self
            .store
            .commit(Change::Tasks(tasks.clone()).audited(audit));
        let task_ids = self.cluster.enqueue_all(tasks);
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
            w => Some(self.cluster.resolve_worker(w)?),
        };
        let before = super::numbered_page_token(&req.page_token)?;
        let filter = TaskFilter {
            state,
            worker_id,
            since_ms: req.submitted_since_ms,
        };
        let limit = page_size(req.page_size);
        let (mut page, next) = self.cluster.task_page(&filter, before, limit);
        let stored = self
            .store
            .finished_page(filter, before.unwrap_or(next), limit)
            .await?;
        let stored_numbers: Vec<u64> = stored
            .iter()
            .map(|t| task_number(&t.id).unwrap_or(0))
            .collect();
        let infos = self.cluster.task_infos(&stored);
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
        match self.cluster.task(id)? {
            Lookup::Here(info) => Ok(info),
            Lookup::Stored => {
                let task = self.store.task(id).await?.ok_or_else(|| {
                    Error::not_found(format!("no task '{}' in the store", herd::text::clip(id)))
                })?;
                Ok(self.cluster.task_infos(&[task]).remove(0))
            }
        }
    }

    /// "Cancelled" is said only once it is stored (the audit entry after it).
    pub async fn cancel(&self, who: &Caller, id: &str) -> Result<pb::TaskInfo, Error> {
        who.may(Op::CancelTask)?;
        let info = match self.cluster.cancel(id) {
            Ok(info) => info,
            // Ended and no longer in memory (a tick after its end was stored): say how it
            // ended, as for one that still is.
            Err(Error::FailedPrecondition(_))
                if matches!(self.cluster.task(id), Ok(Lookup::Stored)) =>
            {
                let ended = TaskState::try_from(self.find_task(id).await?.state())?;
                return Err(Error::FailedPrecondition(format!(
                    "task {id} already {ended}; nothing to cancel"
                )));
            }
            Err(err) => return Err(err),
        };
        let audit = who.audit(Op::CancelTask, &info.id, &info.reason);
        self.store.commit(Change::Audit(Box::new(audit))).await?;
        Ok(info)
    }
}
