//! Who hears about a change's commit.

use tokio::sync::oneshot;

use herd::error::Error;

/// Who hears about a write's commit.
pub enum Done {
    Nobody,
    /// An awaiting caller.
    Reply(oneshot::Sender<Result<(), Error>>),
    /// Runs right after a successful commit, in commit order (e.g. sends an assignment
    /// that may only leave once it is stored). Must be quick and must not block.
    Then(Box<dyn FnOnce() + Send>),
}

impl Done {
    pub fn send(self, result: Result<(), Error>) {
        match self {
            Done::Nobody => {}
            Done::Reply(reply) => {
                let _ = reply.send(result);
            }
            Done::Then(then) => {
                if result.is_ok() {
                    then()
                }
            }
        }
    }
}
