//! Runs commands of the grammar against a master's Admin service and renders the answers.
//! The master's own REPL and herdctl both go through here, over gRPC, so they always show
//! the same thing.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use crate::command::{
    Command, DEFAULT_TASK_LIMIT, HELP, Parsed, TaskCommand, TokenCommand, WorkerCommand,
};
use crate::failure::Failure;
use crate::render::{self, Style};
use herd::auth::Bearer;
use herd::client::Authed;
use herd::pb;
use herd::pb::admin_client::AdminClient;
use herd::views as json;

/// What to do after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    /// The user asked to leave.
    Exit,
}

/// A connection to one master's Admin service.
pub struct Console {
    pub(crate) admin: AdminClient<Authed>,
    /// Where the master is, for messages.
    pub(crate) url: String,
    style: Style,
    /// Print stable JSON instead of tables (`herdctl --json`).
    json: bool,
    /// The line being run asked for JSON (`--json` anywhere on it).
    line_json: bool,
    /// A person watches: `status` refreshes until a key is pressed.
    live: bool,
    /// How to reach another master: a standby names the leader, and the console follows.
    pub(crate) token: Bearer,
    pub(crate) ca: Option<std::path::PathBuf>,
    /// The last call found no leader there: the one a standby named, or "" (unreachable).
    pub(crate) moved: std::sync::Mutex<Option<String>>,
    /// Every master given (`--master a,b,c`), to find the leader again after a fail-over.
    pub(crate) masters: Option<herd::client::Masters>,
}

impl Console {
    /// A console over an existing channel (`url` only names the master in messages).
    pub fn new(channel: Channel, token: Bearer, url: &str, style: Style) -> Console {
        let admin = AdminClient::with_interceptor(channel, token.clone())
            .max_decoding_message_size(herd::domain::MAX_MESSAGE_BYTES);
        Console {
            token,
            ca: None,
            moved: Default::default(),
            masters: None,
            admin,
            url: url.to_string(),
            style,
            json: false,
            line_json: false,
            live: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        }
    }

    /// Answers in JSON (see README.md for the field names).
    pub fn json(mut self, json: bool) -> Console {
        self.json = json;
        self
    }

    /// The Admin client, for callers that need more than the grammar (completion).
    pub fn admin(&mut self) -> &mut AdminClient<Authed> {
        &mut self.admin
    }

    fn wants_json(&self) -> bool {
        self.json || self.line_json
    }

    /// Runs one parsed line (`--json` on it asks for JSON), writing what it shows to `out`.
    pub async fn run(&mut self, parsed: Parsed, out: &mut dyn Write) -> Result<Flow, Failure> {
        self.line_json = parsed.json;
        let flow = self.execute(parsed.command.clone(), out).await;
        // Refused by a standby, or the master is gone (nothing was done): once more, at the
        // leader now.
        let flow = match flow {
            Err(failure) => match self.new_leader().await {
                Some(leader) => {
                    self.follow(&leader)?;
                    self.execute(parsed.command, out).await
                }
                None => Err(failure),
            },
            flow => flow,
        };
        self.line_json = false;
        flow
    }

    /// Runs one command, writing what it shows to `out`. Errors come back as one line a
    /// person can act on.
    pub async fn execute(
        &mut self,
        command: Command,
        out: &mut dyn Write,
    ) -> Result<Flow, Failure> {
        let text = match command {
            Command::Help => HELP.to_string(),
            Command::HelpOn(text) => text,
            Command::Exit | Command::Quit => return Ok(Flow::Exit),
            Command::Workers { all } => {
                let list = self.all_workers(all).await?;
                self.either(json::workers(&list), || render::workers(&list, self.style))
            }
            Command::Worker {
                action:
                    Some(WorkerCommand::Add {
                        name,
                        labels,
                        secret,
                    }),
                ..
            } => {
                let info = self
                    .admin
                    .add_worker(pb::AddWorkerRequest {
                        name: name.clone(),
                        labels: labels.into_iter().collect(),
                    })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                if secret {
                    return self.worker_secret(name, true, out).await;
                }
                let name = info.description.as_ref().map(|d| d.name.clone());
                self.either(json::worker(&info), || {
                    format!(
                        "{} ({}) added: Pending until `herd-worker --name {0}` connects",
                        name.unwrap_or_default(),
                        info.id
                    )
                })
            }
            Command::Worker {
                action: Some(WorkerCommand::Secret { worker }),
                ..
            } => return self.worker_secret(worker, false, out).await,
            Command::Worker {
                action: Some(WorkerCommand::Forget { worker }),
                ..
            } => {
                let info = self
                    .admin
                    .forget_worker(pb::ForgetWorkerRequest { worker })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                let name = info.description.as_ref().map(|d| d.name.clone());
                self.either(json::worker(&info), || {
                    format!("{} ({}) forgotten", name.unwrap_or_default(), info.id)
                })
            }
            Command::Worker { worker, .. } => {
                let info = self
                    .admin
                    .get_worker(pb::GetWorkerRequest {
                        worker: worker.unwrap_or_default(),
                    })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                self.show_worker(&info)
            }
            Command::Drain { worker } => self.drain(worker, true).await?,
            Command::Undrain { worker } => self.drain(worker, false).await?,
            Command::Status => return self.status(out).await,
            Command::Tasks { state, limit, all } => {
                let state = state.map(pb::TaskState::from).unwrap_or_default() as i32;
                let limit = if all {
                    usize::MAX
                } else {
                    limit.unwrap_or(DEFAULT_TASK_LIMIT)
                };
                return self.tasks(state, limit, out).await;
            }
            Command::Scheduler { name } => {
                let name = name
                    .and_then(|n| clap::ValueEnum::to_possible_value(&n))
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default();
                let changed = !name.is_empty();
                let now = self
                    .admin
                    .scheduler(pb::SchedulerRequest { name })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner()
                    .name;
                if self.wants_json() {
                    serde_json::json!({ "scheduler": now }).to_string()
                } else if changed {
                    format!("scheduler: {now} (switched)")
                } else {
                    format!("scheduler: {now}")
                }
            }
            Command::Task { action } => return self.task(action, out).await,
            Command::Token { action } => self.token(action).await?,
            Command::Audit { limit } => {
                return self.audit(limit.unwrap_or(DEFAULT_TASK_LIMIT), out).await;
            }
        };
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    async fn task(&mut self, action: TaskCommand, out: &mut dyn Write) -> Result<Flow, Failure> {
        let text = match action {
            TaskCommand::Submit {
                name,
                docker_image,
                command,
                cpu,
                memory,
                gpu,
                disk,
                priority,
                constraints,
                run,
                count,
                file,
            } => {
                if let Some(path) = file {
                    let batch = crate::batch::read(&path)?;
                    let req = pb::SubmitTasksRequest {
                        specs: batch.specs.clone(),
                        count: 0,
                    };
                    return self.submit_batch(req, Some((&path, &batch)), out).await;
                }
                let spec = pb::TaskSpec {
                    name,
                    image: docker_image.unwrap_or_default(),
                    command: command.unwrap_or_default(),
                    resources: Some(pb::Resources {
                        cpu,
                        memory_gb: memory,
                        gpu,
                        disk_gb: disk,
                    }),
                    priority,
                    constraints,
                    // Under a millisecond is one: never "no limit".
                    timeout_ms: run.timeout.map_or(0, |d| (d.as_millis() as u64).max(1)),
                    env: run.env.into_iter().collect(),
                    workdir: run.workdir.unwrap_or_default(),
                    retries: run.retries,
                    keep_on_disconnect: run.on_disconnect.keeps(),
                };
                if let Some(count) = count {
                    let req = pb::SubmitTasksRequest {
                        specs: vec![spec],
                        count,
                    };
                    return self.submit_batch(req, None, out).await;
                }
                let info = self
                    .admin
                    .submit_task(pb::SubmitTaskRequest { spec: Some(spec) })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                self.either(json::task(&info), || render::submitted(&info))
            }
            TaskCommand::Status { id } => {
                let info = self
                    .admin
                    .get_task(pb::GetTaskRequest { task_id: id })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                self.either(json::task(&info), || render::task(&info))
            }
            TaskCommand::Cancel { id } => {
                let info = self
                    .admin
                    .cancel_task(pb::CancelTaskRequest { task_id: id })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                match info.state() {
                    _ if self.wants_json() => json::task(&info).to_string(),
                    pb::TaskState::Cancelled => format!("{} cancelled", info.id),
                    _ => format!("{} cancelling: its worker was told to stop it", info.id),
                }
            }
            TaskCommand::Logs { id, follow, all } => {
                let id_for_json = id.clone();
                let mut stream = self
                    .admin
                    .task_logs(pb::TaskLogsRequest {
                        task_id: id,
                        follow,
                        offset: all.then_some(0),
                        length: 0,
                    })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                if self.wants_json() && !follow {
                    let mut data = Vec::new();
                    while let Some(chunk) = stream.message().await.map_err(|s| self.explain(s))? {
                        data.extend(chunk.data);
                    }
                    let text = serde_json::json!({
                        "id": id_for_json,
                        "output": String::from_utf8_lossy(&data),
                    });
                    writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
                    return Ok(Flow::Continue);
                }
                let mut last = b'\n';
                let mut next: Option<u64> = None;
                while let Some(chunk) = stream.message().await.map_err(|s| self.explain(s))? {
                    // A follower that fell behind what the master keeps skips ahead.
                    if let Some(gap) = next
                        .map(|n| chunk.offset.saturating_sub(n))
                        .filter(|g| *g > 0)
                    {
                        let _ = write!(
                            out,
                            "\n[herd: {gap} bytes the master no longer keeps were skipped]\n"
                        );
                    }
                    next = Some(chunk.offset + chunk.data.len() as u64);
                    out.write_all(&chunk.data)
                        .and_then(|_| out.flush())
                        .map_err(|e| format!("error: cannot write: {e}"))?;
                    last = chunk.data.last().copied().unwrap_or(last);
                }
                // On a terminal the prompt (or the shell's) starts on a line of its own;
                // piped or redirected, the output is the task's bytes, exactly.
                if last != b'\n' && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    let _ = writeln!(out);
                }
                return Ok(Flow::Continue);
            }
        };
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    /// `task submit --count/--file`: one call, all or nothing; prints the range of ids
    /// (a bad task of a file is named by its line).
    async fn submit_batch(
        &mut self,
        req: pb::SubmitTasksRequest,
        file: Option<(&std::path::Path, &crate::batch::Batch)>,
        out: &mut dyn Write,
    ) -> Result<Flow, Failure> {
        let ids = match self.admin.submit_tasks(req).await {
            Ok(reply) => reply.into_inner().task_ids,
            Err(status) => {
                return Err(match file {
                    Some((path, batch)) if status.code() == Code::InvalidArgument => {
                        batch.explain(path, status.message()).into()
                    }
                    _ => self.explain(status),
                });
            }
        };
        let text = self.either(serde_json::json!({ "task_ids": ids }), || {
            crate::batch::submitted(&ids)
        });
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    /// Every worker (Removed ones with `all`), page by page.
    async fn all_workers(&mut self, all: bool) -> Result<Vec<pb::WorkerInfo>, Failure> {
        let mut list = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .admin
                .list_workers(pb::ListWorkersRequest {
                    all,
                    page_size: 0,
                    page_token,
                })
                .await
                .map_err(|s| self.explain(s))?
                .into_inner();
            list.extend(page.workers);
            if page.next_page_token.is_empty() {
                return Ok(list);
            }
            page_token = page.next_page_token;
        }
    }

    /// `tasks`: the newest `limit`, page by page. In JSON each page is written as it comes,
    /// so `--json --all` streams however many tasks there are.
    async fn tasks(
        &mut self,
        state: i32,
        limit: usize,
        out: &mut dyn Write,
    ) -> Result<Flow, Failure> {
        let json = self.wants_json();
        let write_err = |e: std::io::Error| format!("error: cannot write: {e}");
        let mut shown = Vec::new();
        let (mut count, mut page_token) = (0usize, String::new());
        if json {
            write!(out, "[").map_err(write_err)?;
        }
        while count < limit {
            let page = self
                .admin
                .list_tasks(pb::ListTasksRequest {
                    state,
                    page_size: (limit - count).min(1000) as u32,
                    page_token,
                    ..Default::default()
                })
                .await
                .map_err(|s| self.explain(s))?
                .into_inner();
            for task in page.tasks.into_iter().take(limit - count) {
                if json {
                    let sep = if count == 0 { "" } else { "," };
                    write!(out, "{sep}{}", json::task(&task)).map_err(write_err)?;
                } else {
                    shown.push(task);
                }
                count += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if json {
            writeln!(out, "]").map_err(write_err)?;
        } else {
            writeln!(out, "{}", render::tasks(&shown)).map_err(write_err)?;
        }
        Ok(Flow::Continue)
    }

    async fn token(&mut self, action: TokenCommand) -> Result<String, Failure> {
        use crate::render::identity as view;
        use herd::views::identity as json;
        Ok(match action {
            TokenCommand::Create { name, role } => {
                let made = self
                    .admin
                    .create_token(pb::CreateTokenRequest {
                        name,
                        role: role.as_str().into(),
                    })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                self.either(json::created(&made), || view::created(&made))
            }
            TokenCommand::List => {
                let mut list = Vec::new();
                let mut page_token = String::new();
                loop {
                    let page = self
                        .admin
                        .list_tokens(pb::ListTokensRequest {
                            page_size: 0,
                            page_token,
                        })
                        .await
                        .map_err(|s| self.explain(s))?
                        .into_inner();
                    list.extend(page.tokens);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                self.either(json::tokens(&list), || view::tokens(&list))
            }
            TokenCommand::Revoke { name } => {
                let info = self
                    .admin
                    .revoke_token(pb::RevokeTokenRequest { name })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                self.either(json::token(&info), || {
                    format!("token '{}' revoked: it is refused from now on", info.name)
                })
            }
        })
    }

    /// `worker secret` (and `worker add --secret`): a new secret, shown once.
    async fn worker_secret(
        &mut self,
        worker: String,
        added: bool,
        out: &mut dyn Write,
    ) -> Result<Flow, Failure> {
        let issued = self
            .admin
            .issue_worker_secret(pb::IssueWorkerSecretRequest { worker })
            .await
            .map_err(|s| self.explain(s))?
            .into_inner();
        let info = issued.worker.unwrap_or_default();
        let name = info
            .description
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        let text = if self.wants_json() {
            serde_json::json!({
                "worker": json::worker(&info),
                "worker_secret": issued.worker_secret,
            })
            .to_string()
        } else {
            format!(
                "{}\n{name} ({}) {}; its secret is above, shown only this once: start its \
                 machine with herd-worker --name {name} --worker-secret SECRET (or \
                 HERD_WORKER_SECRET), and it keeps it in its work dir from then on",
                issued.worker_secret,
                info.id,
                if added {
                    "added: Pending until it connects"
                } else {
                    "has a new secret (the old one no longer works)"
                }
            )
        };
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    /// `audit`: the newest `limit` entries, page by page.
    async fn audit(&mut self, limit: usize, out: &mut dyn Write) -> Result<Flow, Failure> {
        use crate::render::identity as view;
        use herd::views::identity as json;
        let mut entries = Vec::new();
        let mut page_token = String::new();
        while entries.len() < limit {
            let page = self
                .admin
                .list_audit(pb::ListAuditRequest {
                    page_size: (limit - entries.len()).min(1000) as u32,
                    page_token,
                })
                .await
                .map_err(|s| self.explain(s))?
                .into_inner();
            let room = limit - entries.len();
            entries.extend(page.entries.into_iter().take(room));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let text = self.either(json::audit(&entries), || view::audit(&entries));
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    async fn drain(&mut self, worker: String, drain: bool) -> Result<String, Failure> {
        let info = self
            .admin
            .drain(pb::DrainRequest { worker, drain })
            .await
            .map_err(|s| self.explain(s))?
            .into_inner();
        if self.wants_json() {
            return Ok(json::worker(&info).to_string());
        }
        let name = info.description.map(|d| d.name).unwrap_or_default();
        Ok(if drain {
            format!("{name} draining: running tasks finish, no new ones start")
        } else {
            format!("{name} takes new tasks again")
        })
    }

    fn show_worker(&self, info: &pb::WorkerInfo) -> String {
        self.either(json::worker(info), || render::worker(info, self.style))
    }

    /// The JSON answer with `--json`, the text one otherwise.
    fn either(&self, json: serde_json::Value, text: impl FnOnce() -> String) -> String {
        if self.wants_json() {
            json.to_string()
        } else {
            text()
        }
    }

    /// `status`: once, or (for a person at a terminal) every 2 s until a key is pressed.
    async fn status(&mut self, out: &mut dyn Write) -> Result<Flow, Failure> {
        loop {
            let summary = self
                .admin
                .summary(pb::SummaryRequest {})
                .await
                .map_err(|s| self.explain(s))?
                .into_inner();
            let live = self.live && !self.wants_json();
            let text = if self.wants_json() {
                json::summary(&summary).to_string()
            } else {
                render::summary(&summary, self.style)
            };
            let shown = if live {
                // Clear the screen, then the view and how to leave it.
                format!(
                    "\x1b[2J\x1b[H{text}\n\n(refreshing every 2s at {}; press any key to stop)",
                    self.url
                )
            } else {
                text
            };
            writeln!(out, "{shown}")
                .and_then(|_| out.flush())
                .map_err(|e| format!("error: cannot write: {e}"))?;
            if !live {
                return Ok(Flow::Continue);
            }
            let pressed = tokio::task::spawn_blocking(|| {
                crate::terminal::key_pressed_within(Duration::from_secs(2))
            })
            .await
            .unwrap_or(true);
            if pressed {
                return Ok(Flow::Continue);
            }
        }
    }
}
