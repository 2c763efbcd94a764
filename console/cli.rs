//! herdctl's command line: where the master is, how to present oneself, and a command of
//! the REPL grammar (none: the REPL). herdctl parses it; `herd-assets` makes its man page,
//! and [`crate::shell`] its shell completions.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "herdctl",
    version,
    about = "Control a running herd master",
    after_help = crate::command::HELP,
    trailing_var_arg = true,
    mut_arg("token", |a| a.help("Token to present: an operator token (default: the master's <data-dir>/token, when on the master's machine)"))
)]
pub struct Cli {
    /// URL of the master (https:// with --ca for TLS), or a comma-separated list of masters
    /// (a leader and its standbys): the one that leads is used.
    #[arg(long, env = "HERD_MASTER", default_value = "http://127.0.0.1:50051")]
    pub master: String,

    #[command(flatten)]
    pub access: herd::config::Access,

    /// Print JSON (stable field names, see README.md) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// A command of the REPL grammar, e.g. `workers --all` or `task submit --command 'echo hi'`.
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}
