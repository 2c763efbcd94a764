//! Which master a console talks to: the one given, or the leader a standby names, or,
//! after a fail-over, the leader found among every master given (`--master a,b,c`); and
//! how a refused call is worded.

use tonic::{Code, Status};

use herd::auth::Bearer;
use herd::client::endpoint;
use herd::pb::admin_client::AdminClient;

use crate::console::Console;
use crate::failure::Failure;
use crate::render::Style;

impl Console {
    /// A console for the master at `url`; the connection is made on first use.
    pub fn connect(
        url: &str,
        ca: Option<&std::path::Path>,
        token: Bearer,
        style: Style,
    ) -> Result<Console, herd::Error> {
        let channel = endpoint(url, ca)?.connect_lazy();
        let mut console = Console::new(channel, token, url, style);
        console.ca = ca.map(std::path::Path::to_path_buf);
        Ok(console)
    }

    /// Knows every master of the cluster: after a fail-over, the console finds the new
    /// leader among them.
    pub fn with_masters(mut self, masters: herd::client::Masters) -> Console {
        self.masters = Some(masters);
        self
    }

    /// The leader to run a refused command at again, if there is another one now.
    pub(crate) async fn new_leader(&mut self) -> Option<String> {
        let moved = self
            .moved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let leader = match (moved.is_empty(), self.masters.as_mut()) {
            (false, _) => moved,
            (true, Some(masters)) => herd::client::find_leader(masters, &self.token).await,
            (true, None) => return None,
        };
        (leader != self.url).then_some(leader)
    }

    /// Talks to the master at `url` from now on (a standby named it the leader).
    pub(crate) fn follow(&mut self, url: &str) -> Result<(), Failure> {
        let channel = endpoint(url, self.ca.as_deref())
            .map_err(|e| Failure::from(format!("error: {e}")))?
            .connect_lazy();
        self.admin = AdminClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(herd::domain::MAX_MESSAGE_BYTES);
        self.url = url.to_string();
        Ok(())
    }

    pub(crate) fn explain(&self, status: Status) -> Failure {
        if status.code() == Code::Unavailable {
            let leader = herd::client::leader_hint(&status).map(|(url, _)| url);
            *self.moved.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(leader.unwrap_or_default());
        }
        let trouble = herd::client_trouble::setup_trouble(&status, &self.url)
            .or_else(|| herd::client_trouble::hint(&status, &self.url));
        if let Some(trouble) = trouble {
            return Failure::from(format!("error: {trouble}"));
        }
        let text = match status.code() {
            Code::Unauthenticated => format!(
                "error: the master at {} refused the call: {}",
                self.url,
                status.message()
            ),
            Code::Unavailable => format!(
                "error: cannot reach the master at {}: {} (is herd-master running?)",
                self.url,
                status.message()
            ),
            _ => format!("error: {}", status.message()),
        };
        Failure::from(text)
    }
}
