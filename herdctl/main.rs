//! herdctl: the REPL grammar from the shell, for scripts; with no command, the same REPL
//! connected to a running master.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use herd_console::cli::Cli;
use herd_console::command::parse_words;
use herd_console::console::Console;
use herd_console::render::Style;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.first().map(String::as_str) == Some("completions") {
        return completions(&cli.command[1..]);
    }
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

/// `herdctl completions SHELL`: the completion script, on stdout (no master needed).
fn completions(args: &[String]) -> ExitCode {
    use clap::ValueEnum;
    use herd_console::shell::{Shell, completions, shells};
    let shell = match args {
        [shell] => Shell::from_str(shell, true).ok(),
        _ => None,
    };
    let Some(shell) = shell else {
        eprintln!(
            "herdctl: usage: herdctl completions SHELL, where SHELL is one of {}\n\
             e.g. herdctl completions bash > /etc/bash_completion.d/herdctl",
            shells()
        );
        return ExitCode::from(2);
    };
    use std::io::Write;
    match std::io::stdout().write_all(&completions(shell)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herdctl: {err}");
            ExitCode::FAILURE
        }
    }
}
