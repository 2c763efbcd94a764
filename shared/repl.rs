//! The interactive shell (`master> `) over a [`Console`], and the log writer that keeps
//! log lines from tearing through the line being typed.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

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
struct Sink {
    printer: Option<Printer>,
    /// A command is writing its reply.
    busy: bool,
    held: VecDeque<String>,
    dropped: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    printer: None,
    busy: false,
    held: VecDeque::new(),
    dropped: 0,
});

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the start (`true`) or end of a reply; at the end, what was held is printed.
fn replying(busy: bool) {
    let (held, dropped) = {
        let mut sink = sink();
        sink.busy = busy;
        if busy {
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
/// runs (held back while a command replies), to stderr otherwise.
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
        let text = String::from_utf8_lossy(&self.buf)
            .trim_end_matches('\n')
            .to_string();
        if sink.busy {
            if sink.held.len() == HELD_LINES {
                sink.held.pop_front();
                sink.dropped += 1;
            }
            sink.held.push_back(text);
            return;
        }
        if let Some(printer) = sink.printer.as_mut()
            && printer.print(text).is_ok()
        {
            return;
        }
        let _ = std::io::stderr().write_all(&self.buf);
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
        sink().printer = Some(Box::new(printer));
    }
    println!("type 'help' for the commands, 'exit' or Ctrl-D to leave");
    let result = loop {
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    // Saved at once: a master killed later keeps what was typed.
                    if let Some(path) = &history {
                        let _ = editor.save_history(path);
                    }
                }
                let command = match parse_line(&line) {
                    Ok(Some(command)) => command,
                    Ok(None) => continue,
                    Err(err) => {
                        println!("{err}");
                        continue;
                    }
                };
                // Ctrl-C while a command runs (e.g. `task logs --follow`) stops the command,
                // not the program.
                let mut stdout = std::io::stdout();
                replying(true);
                let outcome = runtime.block_on(async {
                    tokio::select! {
                        outcome = console.run(command, &mut stdout) => Some(outcome),
                        _ = tokio::signal::ctrl_c() => None,
                    }
                });
                match outcome {
                    Some(Ok(Flow::Continue)) => {}
                    Some(Ok(Flow::Exit)) => {
                        replying(false);
                        break Ok(());
                    }
                    Some(Err(err)) => println!("{err}"),
                    None => println!("interrupted"),
                }
                let _ = stdout.flush();
                replying(false);
            }
            // Ctrl-C clears the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    sink().printer = None;
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    result
}
