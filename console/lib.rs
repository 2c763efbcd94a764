//! herd's operator console, the same for the master's REPL and herdctl: the command
//! grammar (`command`), the console that runs a command against a master over the Admin
//! API (`console`), the text rendering of its answers (`render`; the JSON views are the
//! contract's, `herd::views`), completion, the REPL and `task submit --file` batches.
//! What a command could not do reaches the person as a [`failure::Failure`].

pub mod batch;
pub mod cli;
pub mod command;
pub mod complete;
pub mod console;
pub mod failure;
mod reach;
pub mod render;
pub mod repl;
pub mod shell;
pub mod terminal;
