//! The interactive shell (`master> `) over a [`Console`], and the log writer that keeps
//! log lines from tearing through the line being typed.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter};

use crate::command::parse_line;
use crate::complete::Completion;
use crate::console::{Console, Flow};

type Printer = Box<dyn ExternalPrinter + Send>;

/// Most log lines held back while a command prints its reply; older ones are counted, not
/// kept.
const HELD_LINES: usize = 1000;

/// Where log lines go while a REPL is open: above the prompt while one is on screen, held
/// back while a command writes its reply (so no log line lands inside it), and printed
/// whole once the reply is done.
///
/// Lines above the prompt are printed by a thread of their own ([`print_lines`]):
/// rustyline's printer can block (its queue to the line editor holds one message, drained
/// only while a line is being read), and no logging thread, nor the REPL itself, may ever
/// wait for it. That wait, under the lock below, once stopped the REPL for good while
/// workers came and went.
struct Sink {
    /// A REPL is open: lines go to its printer thread.
    open: bool,
    /// A command is writing its reply.
    busy: bool,
    /// The printer thread is printing a line right now.
    printing: bool,
    /// Lines for the printer thread.
    queue: VecDeque<String>,
    held: VecDeque<String>,
    dropped: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    open: false,
    busy: false,
    printing: false,
    queue: VecDeque::new(),
    held: VecDeque::new(),
    dropped: 0,
});
static WAKE: Condvar = Condvar::new();

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    fn hold(&mut self, line: String) {
        if self.held.len() == HELD_LINES {
            self.held.pop_front();
            self.dropped += 1;
        }
        self.held.push_back(line);
    }
}

/// The printer thread: prints queued lines above the prompt, or holds them back while a
/// command replies. Ends when the REPL closes (or stays blocked in a print that can never
/// complete, harming nobody).
fn print_lines(mut printer: Printer) {
    let mut guard = sink();
    loop {
        while guard.queue.is_empty() && guard.open {
            guard = WAKE.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        if !guard.open {
            return;
        }
        let line = guard.queue.pop_front().expect("not empty");
        if guard.busy {
            guard.hold(line);
            continue;
        }
        guard.printing = true;
        drop(guard);
        // Outside the line editor (a line was just entered) rustyline writes the text as it
        // is: the newline keeps it a line of its own. Inside, it adds none when there is one.
        let line = line + "\n";
        if let Err(e) = printer.print(line.clone()) {
            let _ = write!(std::io::stderr(), "[{e}] {line}");
        }
        guard = sink();
        guard.printing = false;
        WAKE.notify_all();
    }
}

/// Marks the start (`true`) or end of a reply; at the end, what was held is printed.
fn replying(busy: bool) {
    let (held, dropped) = {
        let mut sink = sink();
        sink.busy = busy;
        if busy {
            // A line being printed as the reply starts finishes first (briefly: outside
            // the line editor it is a plain write).
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
            while sink.printing {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                sink = WAKE
                    .wait_timeout(sink, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            return;
        }
        (
            std::mem::take(&mut sink.held),
            std::mem::take(&mut sink.dropped),
        )
    };
    let mut err = std::io::stderr().lock();
    if dropped > 0 {
        let _ = writeln!(
            err,
            "[{dropped} more log lines while the command ran were dropped]"
        );
    }
    for line in held {
        let _ = writeln!(err, "{line}");
    }
}

/// A `tracing` writer: one buffer per log event, printed above the prompt while the REPL
/// runs (held back while a command replies), to stderr otherwise. Never blocks on the
/// terminal.
#[derive(Default)]
pub struct LogWriter {
    buf: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut sink = sink();
        if !sink.open {
            drop(sink);
            let _ = std::io::stderr().write_all(&self.buf);
            return;
        }
        let text = String::from_utf8_lossy(&self.buf)
            .trim_end_matches('\n')
            .to_string();
        if sink.busy {
            sink.hold(text);
            return;
        }
        if sink.queue.len() >= HELD_LINES {
            sink.queue.pop_front();
            sink.dropped += 1;
        }
        sink.queue.push_back(text);
        WAKE.notify_all();
    }
}

/// Runs the REPL until `exit`, `quit` or Ctrl-D. Blocking: call it from a thread of its
/// own, with a handle to the runtime that serves the console's calls.
pub fn run(
    mut console: Console,
    prompt: &str,
    history: Option<PathBuf>,
    runtime: tokio::runtime::Handle,
) -> rustyline::Result<()> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        // No cursor-position query before each prompt: its answer is read from the same
        // input as the keys, and keys typed ahead while it waits were taken for a broken
        // answer and lost (a line arrived as `mmand 'true' --cpu 0.1`). Every reply ends
        // with a newline, so the prompt starts a line anyway.
        .check_cursor_position(false)
        .build();
    let mut editor: Editor<Completion, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(Completion::new(
        console.admin().clone(),
        runtime.clone(),
    )));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    if let Ok(printer) = editor.create_external_printer() {
        let printer: Printer = Box::new(printer);
        sink().open = true;
        std::thread::Builder::new()
            .name("repl-log".into())
            .spawn(move || print_lines(printer))
            .map_err(ReadlineError::Io)?;
    }
    println!("type 'help' for the commands, 'exit' or Ctrl-D to leave");
    let result = loop {
        match editor.readline(prompt) {
            // A paste of several lines arrives as one (bracketed paste): each line is a
            // command of its own, in order, as in a shell.
            Ok(text) => {
                let mut flow = Flow::Continue;
                for line in text.split(['\n', '\r']) {
                    flow = run_line(&mut console, &mut editor, line, history.as_ref(), &runtime);
                    if matches!(flow, Flow::Exit) {
                        break;
                    }
                }
                if matches!(flow, Flow::Exit) {
                    break Ok(());
                }
            }
            // Ctrl-C clears the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    {
        let mut sink = sink();
        sink.open = false;
        let queued: Vec<String> = sink.queue.drain(..).collect();
        drop(sink);
        WAKE.notify_all();
        for line in queued {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    result
}

/// Runs one line typed or pasted at the prompt: kept in the history, parsed, and its
/// command run with the log held back while it replies.
fn run_line(
    console: &mut Console,
    editor: &mut Editor<Completion, DefaultHistory>,
    line: &str,
    history: Option<&PathBuf>,
    runtime: &tokio::runtime::Handle,
) -> Flow {
    if line.trim().is_empty() {
        return Flow::Continue;
    }
    let _ = editor.add_history_entry(line);
    // Saved at once: a master killed later keeps what was typed.
    if let Some(path) = history {
        let _ = editor.save_history(path);
    }
    let command = match parse_line(line) {
        Ok(Some(command)) => command,
        Ok(None) => return Flow::Continue,
        Err(err) => {
            println!("{err}");
            return Flow::Continue;
        }
    };
    // Ctrl-C while a command runs (e.g. `task logs --follow`) stops the command, not the
    // program.
    let mut stdout = std::io::stdout();
    replying(true);
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = console.run(command, &mut stdout) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let flow = match outcome {
        Some(Ok(flow)) => flow,
        Some(Err(err)) => {
            println!("{err}");
            Flow::Continue
        }
        None => {
            println!("interrupted");
            Flow::Continue
        }
    };
    let _ = stdout.flush();
    replying(false);
    flow
}
