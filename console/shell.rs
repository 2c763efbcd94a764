//! Shell completions for herdctl (`herdctl completions bash|zsh|fish`): its own flags, and
//! after them the REPL grammar's command words, subcommands and flags, from the same
//! tables the REPL's Tab completion uses (`complete.rs`). Live worker and task ids are the
//! REPL's alone: a shell script cannot ask the master.

use clap::{Arg, ArgAction, Command, CommandFactory, ValueEnum};

use herd::domain::TaskState;

use crate::complete::{COMMANDS, ROLES, SCHEDULERS, SUBMIT_FLAGS, TASK_ACTIONS, TOKEN_ACTIONS};

/// The shells completions are made for.
pub use clap_complete::Shell;

/// The completion script of herdctl for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut command = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "herdctl", &mut out);
    out
}

/// The shells `herdctl completions` takes, for its error message.
pub fn shells() -> String {
    let names: Vec<String> = Shell::value_variants()
        .iter()
        .filter_map(|s| s.to_possible_value().map(|v| v.get_name().to_string()))
        .collect();
    names.join(", ")
}

/// herdctl as the shell sees it: its flags, then one subcommand per command of the grammar.
pub fn command() -> Command {
    let herdctl = crate::cli::Cli::command();
    let mut command = Command::new("herdctl")
        .about(herdctl.get_about().cloned().unwrap_or_default())
        .version(herd::VERSION)
        // The grammar has its own `help`.
        .disable_help_subcommand(true);
    for arg in herdctl.get_arguments() {
        if !["command", "help", "version"].contains(&arg.get_id().as_str()) {
            command = command.arg(arg.clone());
        }
    }
    for word in COMMANDS {
        let sub = match *word {
            "exit" | "quit" => continue,
            "workers" => Command::new("workers").arg(switch("--all")),
            "worker" => Command::new("worker").subcommands([
                Command::new("add")
                    .arg(Arg::new("name").required(true))
                    .arg(valued("--label"))
                    .arg(valued("--secret")),
                Command::new("forget").arg(Arg::new("worker").required(true)),
                Command::new("secret").arg(Arg::new("worker").required(true)),
            ]),
            "task" => Command::new("task").subcommands(TASK_ACTIONS.iter().map(|action| {
                let sub = Command::new(*action);
                match *action {
                    "submit" => sub.args(SUBMIT_FLAGS.iter().map(|f| valued(f))),
                    "logs" => sub
                        .arg(Arg::new("task").required(true))
                        .arg(switch("--follow")),
                    _ => sub.arg(Arg::new("task").required(true)),
                }
            })),
            "tasks" => Command::new("tasks").arg(
                valued("--state").value_parser(
                    TaskState::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>(),
                ),
            ),
            "scheduler" => {
                Command::new("scheduler").arg(Arg::new("policy").value_parser(SCHEDULERS.to_vec()))
            }
            "drain" | "undrain" => Command::new(*word).arg(Arg::new("worker").required(true)),
            "token" => Command::new("token").subcommands(TOKEN_ACTIONS.iter().map(|action| {
                let sub = Command::new(*action);
                match *action {
                    "create" => sub
                        .arg(Arg::new("name").required(true))
                        .arg(valued("--role").value_parser(ROLES.to_vec())),
                    "revoke" => sub.arg(Arg::new("name").required(true)),
                    _ => sub,
                }
            })),
            "audit" => Command::new("audit").arg(valued("--limit")),
            other => Command::new(other),
        };
        command = command.subcommand(sub);
    }
    command.subcommand(
        Command::new("completions")
            .about("Print the shell completion script")
            .arg(Arg::new("shell").value_parser(clap::value_parser!(Shell))),
    )
}

fn switch(flag: &'static str) -> Arg {
    let name = flag.trim_start_matches('-');
    Arg::new(name).long(name).action(ArgAction::SetTrue)
}

fn valued(flag: &'static str) -> Arg {
    let name = flag.trim_start_matches('-');
    Arg::new(name).long(name).action(ArgAction::Append)
}
