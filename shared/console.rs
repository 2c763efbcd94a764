//! Runs commands of the grammar against a master's Admin service and renders the answers.
//! The master's own REPL and herdctl both go through here, over gRPC, so they always show
//! the same thing.

use std::io::Write;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::command::{Command, HELP, TaskCommand};
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::render::{self, Style};

/// What to do after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    /// The user asked to leave.
    Exit,
}

/// A connection to one master's Admin service.
pub struct Console {
    admin: AdminClient<Channel>,
    url: String,
    style: Style,
}

impl Console {
    /// A console for the master at `url`; the connection is made on first use.
    pub fn new(url: &str, style: Style) -> Result<Console, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("'{url}' is not a master URL ({e}): use http://HOST:PORT"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        Ok(Console {
            admin: AdminClient::new(endpoint.connect_lazy()),
            url: url.to_string(),
            style,
        })
    }

    /// Runs one command, writing what it shows to `out`. Errors come back as one line a
    /// person can act on.
    pub async fn execute(&mut self, command: Command, out: &mut dyn Write) -> Result<Flow, String> {
        let text = match command {
            Command::Help => HELP.to_string(),
            Command::Exit | Command::Quit => return Ok(Flow::Exit),
            Command::Workers { all } => {
                let list = self
                    .admin
                    .list_workers(pb::ListWorkersRequest { all })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner()
                    .workers;
                render::workers(&list, self.style)
            }
            Command::Worker { worker } => {
                let info = self
                    .admin
                    .get_worker(pb::GetWorkerRequest { worker })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                render::worker(&info, self.style)
            }
            Command::Tasks { state } => {
                let state = state.map(pb::TaskState::from).unwrap_or_default() as i32;
                let list = self
                    .admin
                    .list_tasks(pb::ListTasksRequest { state })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner()
                    .tasks;
                render::tasks(&list)
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
                if changed {
                    format!("scheduler: {now} (switched)")
                } else {
                    format!("scheduler: {now}")
                }
            }
            Command::Task { action } => return self.task(action, out).await,
        };
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    async fn task(&mut self, action: TaskCommand, out: &mut dyn Write) -> Result<Flow, String> {
        let text = match action {
            TaskCommand::Submit {
                name,
                docker_image,
                command,
                cpu,
                memory,
                gpu,
            } => {
                let spec = pb::TaskSpec {
                    name,
                    image: docker_image.unwrap_or_default(),
                    command: command.unwrap_or_default(),
                    resources: Some(pb::Resources {
                        cpu,
                        memory_gb: memory,
                        gpu,
                    }),
                };
                let info = self
                    .admin
                    .submit_task(pb::SubmitTaskRequest { spec: Some(spec) })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                render::submitted(&info)
            }
            TaskCommand::Status { id } => {
                let info = self
                    .admin
                    .get_task(pb::GetTaskRequest { task_id: id })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                render::task(&info)
            }
            TaskCommand::Cancel { id } => {
                let info = self
                    .admin
                    .cancel_task(pb::CancelTaskRequest { task_id: id })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                match info.state() {
                    pb::TaskState::Cancelled => format!("{} cancelled", info.id),
                    _ => format!("{} cancelling: its worker was told to stop it", info.id),
                }
            }
            TaskCommand::Logs { id, follow } => {
                let mut stream = self
                    .admin
                    .task_logs(pb::TaskLogsRequest {
                        task_id: id,
                        follow,
                    })
                    .await
                    .map_err(|s| self.explain(s))?
                    .into_inner();
                let mut last = b'\n';
                while let Some(chunk) = stream.message().await.map_err(|s| self.explain(s))? {
                    out.write_all(&chunk.data)
                        .and_then(|_| out.flush())
                        .map_err(|e| format!("error: cannot write: {e}"))?;
                    last = chunk.data.last().copied().unwrap_or(last);
                }
                if last != b'\n' {
                    let _ = writeln!(out);
                }
                return Ok(Flow::Continue);
            }
        };
        writeln!(out, "{text}").map_err(|e| format!("error: cannot write: {e}"))?;
        Ok(Flow::Continue)
    }

    fn explain(&self, status: Status) -> String {
        match status.code() {
            Code::Unavailable => format!(
                "error: cannot reach the master at {}: {} (is herd-master running?)",
                self.url,
                status.message()
            ),
            _ => format!("error: {}", status.message()),
        }
    }
}
