//! herd-assets: writes the man pages of the three programs (from their clap definitions,
//! clap_mangen) and herdctl's shell completions into a folder, for the Debian package
//! (`cargo run --release --bin herd-assets -- target/assets`, then `cargo deb`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use herd_console::shell::{Shell, completions};

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: herd-assets DIR (writes DIR/man/*.1 and DIR/completions/*)");
        return ExitCode::from(2);
    };
    match write(&out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("herd-assets: {}: {err}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn write(out: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let shells = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&shells)?;
    let mut written = Vec::new();
    let pages = [
        herd_master::cli::Cli::command(),
        herd_worker::cli::Cli::command(),
        herd_console::cli::Cli::command()
            .after_help("Commands: see herdctl help, or herdctl --help"),
    ];
    for command in pages {
        let path = man.join(format!("{}.1", command.get_name()));
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        std::fs::write(&path, page)?;
        written.push(path);
    }
    for (shell, name) in [
        (Shell::Bash, "herdctl"),
        (Shell::Zsh, "_herdctl"),
        (Shell::Fish, "herdctl.fish"),
    ] {
        let path = shells.join(name);
        std::fs::write(&path, completions(shell))?;
        written.push(path);
    }
    Ok(written)
}
