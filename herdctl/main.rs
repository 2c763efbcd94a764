//! herdctl: the REPL grammar from the shell, for scripts; with no command, the same REPL
//! connected to a running master.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use herd_console::command::parse_words;
use herd_console::console::Console;
use herd_console::render::Style;

#[derive(Parser)]
#[command(
    name = "herdctl",
    version,
    about = "Control a running herd master",
    after_help = herd_console::command::HELP,
    trailing_var_arg = true,
    mut_arg("token", |a| a.help("Token to present: an operator token (default: the master's <data-dir>/token, when on the master's machine)"))
)]
struct Cli {
    /// URL of the master (https:// with --ca for TLS), or a comma-separated list of masters
    /// (a leader and its standbys): the one that leads is used.
    #[arg(long, env = "HERD_MASTER", default_value = "http://127.0.0.1:50051")]
    master: String,

    #[command(flatten)]
    access: herd::config::Access,

    /// Print JSON (stable field names, see README.md) instead of tables.
    #[arg(long)]
    json: bool,

    /// A command of the REPL grammar, e.g. `workers --all` or `task submit --command 'echo hi'`.
    #[arg(allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("herdctl: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let console = runtime.block_on(async {
        let bearer = cli.access.bearer(herd::auth::TOKEN_FILE)?;
        let ca = cli.access.ca.as_deref();
        let mut masters = herd::client::Masters::parse(&cli.master, ca, None)?;
        let master = match masters.len() {
            1 => masters.current().to_string(),
            _ => herd::client::find_leader(&mut masters, &bearer).await,
        };
        let console = Console::connect(&master, ca, bearer, Style::detect())?;
        Ok::<_, herd::Error>(match masters.len() {
            1 => console,
            _ => console.with_masters(masters),
        })
    });
    let console = match console {
        Ok(console) => console.json(cli.json),
        Err(err) => {
            eprintln!("herdctl: {err}");
            return ExitCode::from(2);
        }
    };
    if cli.command.is_empty() {
        if !std::io::stdin().is_terminal() {
            eprintln!("herdctl: no command given and stdin is not a terminal; try 'herdctl help'");
            return ExitCode::from(2);
        }
        let handle = runtime.handle().clone();
        let prompt = "herd> ";
        return match herd_console::repl::run(console, prompt, None, handle) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("herdctl: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let command = match parse_words(&cli.command) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("herdctl: {err}");
            return ExitCode::from(2);
        }
    };
    let mut console = console;
    let mut stdout = std::io::stdout();
    match runtime.block_on(console.run(command, &mut stdout)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herdctl: {err}");
            ExitCode::FAILURE
        }
    }
}
