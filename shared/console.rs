//! Runs commands of the grammar against a master's Admin service and renders the answers.
//! The master's own REPL and herdctl both go through here, over gRPC, so they always show
//! the same thing.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::command::{Command, HELP};
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::render::{self, Style};

/// What a command produced.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Text to print.
    Text(String),
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

    /// Runs one command. Errors come back as one line a person can act on.
    pub async fn execute(&mut self, command: Command) -> Result<Reply, String> {
        let text = match command {
            Command::Help => HELP.to_string(),
            Command::Exit | Command::Quit => return Ok(Reply::Exit),
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
        };
        Ok(Reply::Text(text))
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
