//! The command grammar shared by the master's REPL and herdctl: one parser, so the two can
//! never drift apart.

use clap::{Parser, Subcommand};

use herd::config::SchedulerKind;
use herd::domain::run::OnDisconnect;
use herd::domain::{Role, TaskState};
use herd::error::Error;

use crate::failure::Failure;

/// Text printed by `help`.
pub const HELP: &str = "\
commands:
  workers [--all]                     list workers (--all includes Removed ones)
  worker <id|name>                    show one worker in full
  worker add <name> [--label k=v]... [--secret]
                                      pre-register a worker: Pending until it connects; its
                                      labels are merged over the ones it reports; --secret
                                      prints its secret once, to provision its machine with
                                      (herd-worker --worker-secret)
  worker secret <id|name>             a new secret for a worker that is not Active (printed
                                      once; the old one stops working)
  worker forget <id|name>             remove a worker that is not Active (its tasks re-queue)
  task submit [--name N] [--docker-image IMG] [--command CMD] [--cpu F] [--memory GB] [--gpu N]
              [--disk GB] [--priority N] [--constraint K=V|K!=V|K]... [--timeout D] [--env K=V]...
              [--workdir PATH] [--retries N] [--on-disconnect stop|keep] [--count N]
                                      submit a task (at least one of --docker-image/--command;
                                      defaults: --cpu 1 --memory 0 --gpu 0 --disk 0 --priority 0;
                                      higher priority first; constraints on worker labels,
                                      built-in: os, arch, hostname, runtime, gpu.model);
                                      prints its id; --timeout kills and fails it after D;
                                      --retries re-runs it when it exits non-zero;
                                      --on-disconnect keep leaves it running on a worker cut
                                      off from the master (default: stopped first, so it
                                      never runs twice at once); --count submits N copies
                                      (HERD_TASK_INDEX 0..N-1) and prints the ids
  task submit --file tasks.jsonl      one task per JSON line (fields as in --json / the HTTP
                                      API); all of them or none
  tasks [--state S] [--limit N | --all]
                                      the newest tasks (50 unless --limit; --all for every
                                      one); S: queued, assigned, running, succeeded, failed,
                                      cancelled
  task status <id>                    one task in full, with every attempt
  task logs <id> [--all] [--follow]   its output: the last 1 MiB (--all: all the master
                                      keeps); --follow streams until it ends (Ctrl-C stops)
  task cancel <id>                    stop a task (every process of it, or its container)
  scheduler [round-robin|resource-aware|bin-pack]
                                      show or switch the placement policy
  drain <id|name>                     no new tasks on a worker; running ones finish
  undrain <id|name>                   take new tasks again
  token create <name> --role admin|operator|viewer
                                      make a named operator token; prints it once
                                      (viewer: read only; operator: also submit, cancel,
                                      drain; admin: everything, tokens included)
  token list                          named tokens: role, created, last used
  token revoke <name>                 refuse a token from now on
  audit [--limit N]                   who changed what, when and from where, newest first
                                      (50 unless --limit)
  status                              cluster at a glance, refreshed every 2s until a key
  help                                this text
  exit | quit                         leave (Ctrl-D works too; Ctrl-C clears the line)
--json anywhere on a line prints JSON instead of tables";

/// How many tasks `tasks` shows without --limit or --all.
pub const DEFAULT_TASK_LIMIT: usize = 50;

/// One command of the grammar.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Command {
    /// List workers: name, id, status, address, cpu, memory, gpu, disk, tasks, last seen.
    Workers {
        /// Include Removed workers.
        #[arg(long)]
        all: bool,
    },
    /// Show one worker in full, or act on it.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Worker {
        /// A worker id or name.
        #[arg(required = true)]
        worker: Option<String>,
        #[command(subcommand)]
        action: Option<WorkerCommand>,
    },
    /// Task commands.
    Task {
        #[command(subcommand)]
        action: TaskCommand,
    },
    /// List tasks, newest first.
    Tasks {
        /// Only tasks in this state.
        #[arg(long, value_parser = parse_state)]
        state: Option<TaskState>,
        /// At most this many (default 50).
        #[arg(long, conflicts_with = "all")]
        limit: Option<usize>,
        /// Every task, page by page.
        #[arg(long)]
        all: bool,
    },
    /// Show or switch the placement policy.
    Scheduler {
        #[arg(value_enum)]
        name: Option<SchedulerKind>,
    },
    /// Stop placing new tasks on a worker.
    Drain { worker: String },
    /// Place new tasks on a worker again.
    Undrain { worker: String },
    /// Workers and tasks by state, refreshed until a key is pressed.
    Status,
    /// Named operator tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Who changed what, newest first.
    Audit {
        /// At most this many (default 50).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// List the commands.
    Help,
    /// `--help` or `-h` anywhere on a line: the part of the help about that command.
    #[command(skip)]
    HelpOn(String),
    /// Leave.
    Exit,
    /// Leave.
    Quit,
}

/// `worker ...` commands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum WorkerCommand {
    /// Pre-register a worker (Pending until it connects).
    Add {
        name: String,
        /// k=v, merged over the labels the worker reports; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Also issue its secret, to provision its machine with (herd-worker
        /// --worker-secret or HERD_WORKER_SECRET); printed once.
        #[arg(long)]
        secret: bool,
    },
    /// Issue a new secret for a worker that is not Active (printed once; the old one
    /// stops working).
    Secret { worker: String },
    /// Remove a worker that is not Active.
    Forget { worker: String },
}

/// `token ...` commands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum TokenCommand {
    /// Make a named token with a role; prints it once.
    Create {
        name: String,
        /// admin, operator or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Named tokens: role, created, last used.
    List,
    /// Refuse a token from now on.
    Revoke { name: String },
}

fn parse_role(text: &str) -> Result<Role, Error> {
    Role::parse(text).ok_or_else(|| {
        Error::invalid(format!(
            "'{text}' is not a role; use admin, operator or viewer"
        ))
    })
}

fn parse_label(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::invalid(format!(
            "'{}' is not KEY=VALUE",
            herd::text::clip(text)
        ))),
    }
}

/// `task ...` commands.
// One is parsed per typed line and dropped at once: the size of `Submit` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum TaskCommand {
    /// Submit a task; prints its id.
    #[command(allow_negative_numbers = true)]
    Submit {
        #[arg(long, default_value = "")]
        name: String,
        /// Container image to run the command in.
        #[arg(long = "docker-image")]
        docker_image: Option<String>,
        /// Shell command.
        #[arg(long)]
        command: Option<String>,
        /// CPUs (fractions allowed).
        #[arg(long, default_value_t = 1.0)]
        cpu: f64,
        /// Memory in GB.
        #[arg(long, default_value_t = 0.0)]
        memory: f64,
        /// Whole GPUs.
        #[arg(long, default_value_t = 0)]
        gpu: u32,
        /// Disk in the worker's work dir, GB.
        #[arg(long, default_value_t = 0.0)]
        disk: f64,
        /// Higher first (default 0).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// KEY=VALUE, KEY!=VALUE or KEY on the worker's labels; repeatable, all must hold.
        #[arg(long = "constraint")]
        constraints: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
        /// Submit N copies in one call, each with HERD_TASK_INDEX 0..N-1.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=herd::domain::run::MAX_BATCH as i64))]
        count: Option<u32>,
        /// Submit one task per JSON line of this file (read here, not on the master);
        /// all of them or none.
        #[arg(long, conflicts_with_all = [
            "name", "docker_image", "command", "cpu", "memory", "gpu", "priority",
            "constraints", "timeout", "env", "workdir", "retries", "on_disconnect", "count",
        ])]
        file: Option<std::path::PathBuf>,
    },
    /// One task in full.
    Status { id: String },
    /// A task's output.
    Logs {
        id: String,
        /// Stream until the task ends.
        #[arg(long, short)]
        follow: bool,
        /// All the output the master keeps, not only the last 1 MiB.
        #[arg(long)]
        all: bool,
    },
    /// Stop a task.
    Cancel { id: String },
}

/// How a submitted task runs: time limit, environment, working directory, retries.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct RunArgs {
    /// Kill the whole task this long after it started, and fail it (e.g. 30s, 2h).
    #[arg(long, value_parser = herd::time::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// KEY=VALUE in the task's environment; repeatable.
    #[arg(long, value_parser = herd::domain::run::parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// The task's working directory on the worker (an absolute path).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Run it again when it exits non-zero, up to N times.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// When its worker is cut off from the master past the fencing deadline: stop it
    /// first (default), or keep it running (safe to run twice, must not be interrupted).
    #[arg(long, value_enum, default_value_t = OnDisconnect::Stop)]
    pub on_disconnect: OnDisconnect,
}

fn parse_state(text: &str) -> Result<TaskState, Error> {
    TaskState::parse(text).ok_or_else(|| {
        let words: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
        Error::invalid(format!(
            "'{text}' is not a task state; use one of {}",
            words.join(", ")
        ))
    })
}

#[derive(Debug, Parser)]
#[command(
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Line {
    #[command(subcommand)]
    command: Command,
    /// Print JSON instead of tables (anywhere on the line).
    #[arg(long, global = true)]
    json: bool,
}

/// A parsed line: the command and whether its answer is wanted in JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub command: Command,
    pub json: bool,
}

/// Parses words already split (herdctl's arguments).
pub fn parse_words<I, S>(words: I) -> Result<Parsed, Failure>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let words: Vec<std::ffi::OsString> = words.into_iter().map(Into::into).collect();
    let text: Vec<String> = words
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    if text.iter().any(|w| w == "--help" || w == "-h") {
        return Ok(Parsed {
            command: Command::HelpOn(help_on(&text)),
            json: false,
        });
    }
    Line::try_parse_from(words)
        .map(|line| Parsed {
            command: line.command,
            json: line.json,
        })
        .map_err(|e| Failure::from(one_line(&e.render().to_string())))
}

/// The entries of [`HELP`] about the command the words start with (`task submit`,
/// `workers`); all of it when no entry is.
fn help_on(words: &[String]) -> String {
    let command: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .take_while(|w| !w.starts_with('-'))
        .collect();
    // An entry is a line indented by two spaces and the lines indented deeper after it.
    let mut entries: Vec<Vec<&str>> = Vec::new();
    for line in HELP.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            entries.push(vec![line]);
        } else if line.starts_with("   ")
            && let Some(entry) = entries.last_mut()
        {
            entry.push(line);
        }
    }
    let about = |entry: &&Vec<&str>| {
        let shown: Vec<&str> = entry[0].split_whitespace().collect();
        // The longest run of the typed words the entry starts with.
        (1..=command.len())
            .rev()
            .find(|n| shown.len() >= *n && shown[..*n] == command[..*n])
            .unwrap_or(0)
    };
    let best = entries.iter().map(|e| about(&e)).max().unwrap_or(0);
    if best == 0 {
        return HELP.to_string();
    }
    let mut text = String::from("usage:\n");
    for entry in entries.iter().filter(|e| about(e) == best) {
        for line in entry.iter() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(
        "--json anywhere on a line prints JSON instead of tables; 'help' lists every command",
    );
    text
}

/// Parses one line typed at a prompt. `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Parsed>, Failure> {
    let words = shlex::split(line).ok_or_else(|| {
        "error: unbalanced quotes in the line; close the quote or escape it with \\".to_string()
    })?;
    if words.is_empty() {
        return Ok(None);
    }
    parse_words(words).map(Some)
}

/// Squeezes clap's multi-line error into one line a person can act on: the error itself,
/// clap's tip if it has one, and where to look next.
fn one_line(rendered: &str) -> String {
    // clap writes "error: ..." (possibly continued on indented lines), blank lines, an
    // optional "tip: ...", then usage. Keep the error with its continuation and the tip.
    let mut parts: Vec<String> = Vec::new();
    let mut in_error = false;
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("error:") || line.starts_with("tip:") {
            in_error = line.starts_with("error:");
            parts.push(line.to_string());
        } else if in_error && !line.is_empty() && !line.starts_with("Usage:") {
            if let Some(last) = parts.last_mut() {
                last.push(' ');
                last.push_str(line);
            }
        } else {
            in_error = false;
        }
    }
    if parts.is_empty() {
        parts.push("error: cannot parse the command".into());
    }
    format!("{} (type 'help' for the commands)", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_after_a_command_shows_that_command() {
        let on = |line: &str| match parse_line(line).unwrap().unwrap().command {
            Command::HelpOn(text) => text,
            other => panic!("{line}: {other:?}"),
        };
        let submit = on("task submit --help");
        assert!(submit.contains("task submit [--name N]"), "{submit}");
        assert!(submit.contains("task submit --file"), "{submit}");
        assert!(!submit.contains("token create"), "{submit}");
        let workers = on("workers -h");
        assert!(workers.contains("workers [--all]"), "{workers}");
        assert!(!workers.contains("task submit"), "{workers}");
        // A flag before --help is no command word; an unknown command gets everything.
        assert!(on("task logs t-1 --follow --help").contains("task logs <id>"));
        assert!(on("frobnicate --help").contains("exit | quit"));
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(
            parse_line("workers").unwrap().map(|p| p.command),
            Some(Command::Workers { all: false })
        );
        assert_eq!(
            parse_line("  workers --all ").unwrap().map(|p| p.command),
            Some(Command::Workers { all: true })
        );
        assert_eq!(
            parse_line("worker 'node 1'").unwrap().map(|p| p.command),
            Some(Command::Worker {
                worker: Some("node 1".into()),
                action: None,
            })
        );
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(
            parse_line("task submit --command 'echo hi' --cpu 0.5 --memory 2")
                .unwrap()
                .map(|p| p.command),
            Some(Command::Task {
                action: TaskCommand::Submit {
                    name: String::new(),
                    docker_image: None,
                    command: Some("echo hi".into()),
                    cpu: 0.5,
                    memory: 2.0,
                    gpu: 0,
                    disk: 0.0,
                    priority: 0,
                    constraints: Vec::new(),
                    run: RunArgs::default(),
                    count: None,
                    file: None,
                }
            })
        );
        let parsed = parse_line(
            "task submit --command x --timeout 1.5s --env A=b=c --env B= --workdir /tmp \
             --retries 2 --on-disconnect keep --count 3",
        )
        .unwrap()
        .map(|p| p.command);
        let Some(Command::Task {
            action: TaskCommand::Submit { run, count, .. },
        }) = parsed
        else {
            panic!("{parsed:?}");
        };
        assert_eq!(
            run,
            RunArgs {
                timeout: Some(std::time::Duration::from_millis(1500)),
                env: vec![("A".into(), "b=c".into()), ("B".into(), String::new())],
                workdir: Some("/tmp".into()),
                retries: 2,
                on_disconnect: OnDisconnect::Keep,
            }
        );
        assert_eq!(count, Some(3));
        assert_eq!(
            parse_line("tasks --state running")
                .unwrap()
                .map(|p| p.command),
            Some(Command::Tasks {
                state: Some(TaskState::Running),
                limit: None,
                all: false,
            })
        );
        assert_eq!(
            parse_line("scheduler round-robin")
                .unwrap()
                .map(|p| p.command),
            Some(Command::Scheduler {
                name: Some(SchedulerKind::RoundRobin)
            })
        );
        assert_eq!(
            parse_line("quit").unwrap().map(|p| p.command),
            Some(Command::Quit)
        );
        assert_eq!(
            parse_line("token create ci --role operator")
                .unwrap()
                .map(|p| p.command),
            Some(Command::Token {
                action: TokenCommand::Create {
                    name: "ci".into(),
                    role: Role::Operator
                }
            })
        );
        assert!(parse_line("token create ci --role root").is_err());
        assert_eq!(
            parse_line("audit --limit 5").unwrap().map(|p| p.command),
            Some(Command::Audit { limit: Some(5) })
        );
        assert_eq!(
            parse_line("worker forget old-box")
                .unwrap()
                .map(|p| p.command),
            Some(Command::Worker {
                worker: None,
                action: Some(WorkerCommand::Forget {
                    worker: "old-box".into()
                }),
            })
        );
    }

    #[test]
    fn json_is_taken_anywhere_on_the_line() {
        for line in [
            "--json tasks",
            "tasks --json",
            "tasks --state queued --json",
        ] {
            let parsed = parse_line(line).unwrap().unwrap();
            assert!(parsed.json, "{line}");
            assert!(matches!(parsed.command, Command::Tasks { .. }), "{line}");
        }
        let parsed = parse_line("task status t-1 --json").unwrap().unwrap();
        assert!(parsed.json);
        assert!(!parse_line("tasks").unwrap().unwrap().json);
        assert!(parse_line("tasks --limit 5 --all").is_err());
    }

    #[test]
    fn errors_are_one_line_with_a_hint() {
        let err = parse_line("wrokers").unwrap_err();
        assert!(err.contains("unrecognized subcommand 'wrokers'"), "{err}");
        assert!(err.contains("workers"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = parse_line("worker").unwrap_err();
        assert!(err.contains("<WORKER>"), "{err}");
        let err = parse_line("workers --bogus").unwrap_err();
        assert!(err.contains("--bogus"), "{err}");
        assert!(parse_line("worker 'open").unwrap_err().contains("quotes"));
        assert!(
            parse_line("tasks --state lost")
                .unwrap_err()
                .contains("queued")
        );
        assert!(
            parse_line("task submit --gpu 1.5 --command x")
                .unwrap_err()
                .contains("--gpu")
        );
        assert!(
            parse_line("scheduler fastest")
                .unwrap_err()
                .contains("round-robin")
        );
        for (line, expected) in [
            ("task submit --command x --env NOEQUALS", "KEY=VALUE"),
            ("task submit --command x --timeout soon", "duration"),
            ("task submit --command x --count 0", "--count"),
            ("task submit --command x --count 10001", "--count"),
            ("task submit --file t.jsonl --command x", "--file"),
            ("task submit --file t.jsonl --count 2", "--file"),
        ] {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
        // Negative numbers reach the master, which says what is wrong with them.
        assert!(parse_line("task submit --cpu -1 --command x").is_ok());
    }
}
