//! Where the programs under test are. The test kit is a library of its own, so it is not
//! told their paths at build time (`CARGO_BIN_EXE_*` reaches only the root package's own
//! tests); cargo builds them into the same profile folder as the test or bench that runs,
//! one level above its `deps/`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A program of herd's, usable wherever a path is (`Command::new(MASTER)`).
#[derive(Clone, Copy, Debug)]
pub struct Program(&'static str);

pub const MASTER: Program = Program("herd-master");
pub const WORKER: Program = Program("herd-worker");
pub const HERDCTL: Program = Program("herdctl");

impl Program {
    /// The program's path; panics, naming it, when it was not built.
    pub fn path(self) -> &'static Path {
        static PATHS: [OnceLock<PathBuf>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match self.0 {
            "herd-master" => &PATHS[0],
            "herd-worker" => &PATHS[1],
            _ => &PATHS[2],
        };
        slot.get_or_init(|| {
            let exe = std::env::current_exe().expect("the test's own path");
            let profile = exe
                .parent()
                .and_then(Path::parent)
                .expect("tests run from target/<profile>/deps");
            let path = profile.join(self.0);
            assert!(
                path.exists(),
                "{} was not built; run the tests with `cargo test` from the repository root",
                path.display()
            );
            path
        })
    }
}

impl AsRef<OsStr> for Program {
    fn as_ref(&self) -> &OsStr {
        self.path().as_os_str()
    }
}
