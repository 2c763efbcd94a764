//! Tab completion for the REPL: commands, subcommands, flags, states, scheduler names,
//! and the live worker names/ids and task ids of the cluster (fetched at most every 2 s).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use herd::client::Authed;
use herd::domain::TaskState;
use herd::pb;
use herd::pb::admin_client::AdminClient;

pub(crate) const COMMANDS: &[&str] = &[
    "workers",
    "worker",
    "task",
    "tasks",
    "scheduler",
    "drain",
    "undrain",
    "status",
    "token",
    "audit",
    "help",
    "exit",
    "quit",
];
pub(crate) const TASK_ACTIONS: &[&str] = &["submit", "status", "logs", "cancel"];
pub(crate) const SCHEDULERS: &[&str] = &["round-robin", "resource-aware", "bin-pack"];
pub(crate) const TOKEN_ACTIONS: &[&str] = &["create", "list", "revoke"];
pub(crate) const ROLES: &[&str] = &["admin", "operator", "viewer"];
/// The flags of `task submit`; each takes a value.
pub(crate) const SUBMIT_FLAGS: &[&str] = &[
    "--name",
    "--docker-image",
    "--command",
    "--cpu",
    "--memory",
    "--gpu",
    "--priority",
    "--constraint",
    "--timeout",
    "--env",
    "--workdir",
    "--retries",
    "--on-disconnect",
    "--count",
    "--file",
    "--disk",
];
const CACHE_FOR: Duration = Duration::from_secs(2);

/// What the cluster offers to complete, and when it was asked.
#[derive(Default)]
struct Known {
    at: Option<Instant>,
    workers: Vec<String>,
    tasks: Vec<String>,
}

pub struct Completion {
    admin: AdminClient<Authed>,
    runtime: tokio::runtime::Handle,
    known: RefCell<Known>,
}

impl Completion {
    pub fn new(admin: AdminClient<Authed>, runtime: tokio::runtime::Handle) -> Completion {
        Completion {
            admin,
            runtime,
            known: RefCell::new(Known::default()),
        }
    }

    fn refresh(&self) {
        if self
            .known
            .borrow()
            .at
            .is_some_and(|at| at.elapsed() < CACHE_FOR)
        {
            return;
        }
        let mut admin = self.admin.clone();
        let fetched = self.runtime.block_on(async move {
            let ask = async {
                let workers = admin
                    .list_workers(pb::ListWorkersRequest {
                        all: true,
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .workers;
                let tasks = admin
                    .list_tasks(pb::ListTasksRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .tasks;
                Some((workers, tasks))
            };
            tokio::time::timeout(Duration::from_millis(500), ask)
                .await
                .ok()
                .flatten()
        });
        let mut known = self.known.borrow_mut();
        known.at = Some(Instant::now());
        if let Some((workers, tasks)) = fetched {
            known.workers = workers
                .iter()
                .flat_map(|w| {
                    let name = w.description.as_ref().map(|d| d.name.clone());
                    name.into_iter().chain(std::iter::once(w.id.clone()))
                })
                .collect();
            known.tasks = tasks.into_iter().map(|t| t.id).collect();
        }
    }

    /// Candidates for the word being typed, given the words before it.
    fn candidates(&self, before: &[&str], word: &str) -> Vec<String> {
        let words: Vec<String> = match before {
            [] => strings(COMMANDS),
            ["task"] => strings(TASK_ACTIONS),
            ["token"] => strings(TOKEN_ACTIONS),
            ["token", "create", .., "--role"] => strings(ROLES),
            ["token", "create", _, ..] => strings(&["--role"]),
            ["audit", ..] => strings(&["--limit"]),
            [.., "--state"] => TaskState::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            ["scheduler"] => strings(SCHEDULERS),
            ["worker"] => {
                self.refresh();
                let mut words = strings(&["add", "forget", "secret"]);
                words.extend(self.known.borrow().workers.iter().cloned());
                words
            }
            ["worker", "forget" | "secret"] | ["drain" | "undrain"] => {
                self.refresh();
                self.known.borrow().workers.clone()
            }
            ["worker", "add", _, ..] => strings(&["--label", "--secret"]),
            ["task", "status" | "logs" | "cancel"] if !word.starts_with('-') => {
                self.refresh();
                self.known.borrow().tasks.clone()
            }
            ["workers", ..] => strings(&["--all"]),
            ["tasks", ..] => strings(&["--state"]),
            ["task", "submit", ..] => strings(SUBMIT_FLAGS),
            ["task", "logs", ..] => strings(&["--follow"]),
            _ => Vec::new(),
        };
        words.into_iter().filter(|w| w.starts_with(word)).collect()
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        let start = head.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &head[start..];
        let before: Vec<&str> = head[..start].split_whitespace().collect();
        let pairs = self
            .candidates(&before, word)
            .into_iter()
            .map(|c| Pair {
                display: c.clone(),
                replacement: format!("{c} "),
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}
