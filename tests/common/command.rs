//! Running the real `beeswax` binary, in the manner of ripgrep's test harness: each test gets
//! a fresh temporary folder ([`Dir`]) and runs [`TestCommand`]s in it; a command that ends
//! otherwise than expected fails the test with its command line, folder, status, stdout and
//! stderr. Manifests for the fixture models are written with [`pack_toml`] and
//! [`Dir::manifests`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{model_dir, root};

/// The `[pack.defaults]` of the committed tiny-sd pack (`manifests/tiny-sd.toml`).
pub const TINY_SD_DEFAULTS: &str =
    "steps = 20\nguidance = 7.5\nscheduler = \"euler\"\nwidth = 64\nheight = 64\n";

/// A fresh, empty temporary folder for one test; removed when dropped.
#[derive(Debug)]
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    /// A new folder whose name starts with `name` (the test's, to find it when debugging).
    pub fn new(name: &str) -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("beeswax-{name}-"))
            .tempdir()
            .unwrap();
        Dir { tmp }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `rel` inside the folder.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// Writes `contents` to `rel` (creating its parent folders); returns the path.
    pub fn create(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Creates the folder `rel` (and its parents); returns its path.
    pub fn create_dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.join(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// The bytes of `rel`.
    pub fn read(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let path = self.join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A copy of the fixture model `model` at `rel`, to break in a test; returns its path.
    pub fn copy_model(&self, model: &str, rel: impl AsRef<Path>) -> PathBuf {
        let dest = self.join(rel);
        copy_dir(&model_dir(model), &dest);
        dest
    }

    /// A manifests folder `rel` holding `files` (name, TOML text); returns its path.
    pub fn manifests(&self, rel: impl AsRef<Path>, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.create_dir(rel);
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    /// The `beeswax` binary, run in this folder.
    pub fn command(&self) -> TestCommand {
        TestCommand::new(self.path())
    }
}

/// Copies the folder `src` to `dest`, recursively.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dest.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A path as a TOML basic string (with forward slashes).
pub fn toml_path(path: &Path) -> String {
    format!("\"{}\"", path.display().to_string().replace('\\', "/"))
}

/// A `[pack]` named `name` on the fixture model `model`, with `defaults` (the lines of its
/// `[pack.defaults]` table; none when empty).
pub fn pack_toml(name: &str, model: &str, defaults: &str) -> String {
    let mut text = format!(
        "[pack]\nname = \"{name}\"\nfamily = \"sd1\"\npath = {}\n",
        toml_path(&model_dir(model))
    );
    if !defaults.is_empty() {
        text.push_str("\n[pack.defaults]\n");
        text.push_str(defaults);
    }
    text
}

/// The `beeswax` binary with its arguments, folder and environment; `BEESWAX_MANIFESTS` and
/// `BEESWAX_API_KEY` are cleared so that the caller's environment does not leak in.
#[derive(Debug)]
pub struct TestCommand {
    cmd: Command,
    dir: PathBuf,
}

impl TestCommand {
    /// The binary, run in `dir`.
    pub fn new(dir: &Path) -> TestCommand {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_beeswax"));
        cmd.current_dir(dir)
            .env_remove("BEESWAX_MANIFESTS")
            .env_remove("BEESWAX_API_KEY")
            .env_remove("BEESWAX_NATS");
        TestCommand {
            cmd,
            dir: dir.to_path_buf(),
        }
    }

    /// The binary, run at the repository root (where the committed `manifests/` are found).
    pub fn in_repo() -> TestCommand {
        TestCommand::new(&root())
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut TestCommand {
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut TestCommand {
        self.cmd.env(key, value);
        self
    }

    /// Reads manifests from `dir` (as `BEESWAX_MANIFESTS`, which `--manifests` overrides).
    pub fn manifests(&mut self, dir: &Path) -> &mut TestCommand {
        self.env("BEESWAX_MANIFESTS", dir)
    }

    /// Runs the command and returns what it did, whatever that was.
    pub fn output(&mut self) -> Output {
        self.cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: the beeswax binary did not run: {e}", self.line()))
    }

    /// Runs the command, which must succeed; returns its output.
    pub fn run(&mut self) -> Output {
        let out = self.output();
        if !out.status.success() {
            panic!(
                "{}",
                self.report("command failed but expected success", &out)
            );
        }
        out
    }

    /// Runs the command, which must succeed; returns its stdout.
    pub fn stdout(&mut self) -> String {
        String::from_utf8_lossy(&self.run().stdout).into_owned()
    }

    /// Runs the command, which must succeed; returns its stderr.
    pub fn stderr(&mut self) -> String {
        String::from_utf8_lossy(&self.run().stderr).into_owned()
    }

    /// Runs the command, which must fail cleanly (non-zero exit, no panic); returns its stderr.
    pub fn assert_err(&mut self) -> String {
        let out = self.output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            panic!(
                "{}",
                self.report("command succeeded but expected failure", &out)
            );
        }
        if stderr.contains("panicked") {
            panic!("{}", self.report("command panicked", &out));
        }
        stderr
    }

    /// Runs the command, which must fail cleanly with every one of `needles` in its stderr.
    pub fn assert_fails_with(&mut self, needles: &[&str]) -> String {
        let stderr = self.assert_err();
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "\n===== {} =====\nstderr lacks {needle:?}:\n{stderr}\n=====\n",
                self.line()
            );
        }
        stderr
    }

    fn line(&self) -> String {
        let mut line = self.cmd.get_program().to_string_lossy().into_owned();
        for arg in self.cmd.get_args() {
            line.push(' ');
            line.push_str(&format!("{:?}", arg.to_string_lossy()));
        }
        line
    }

    fn report(&self, what: &str, out: &Output) -> String {
        format!(
            "\n===== {} =====\n{what}!\ncwd: {}\nstatus: {}\n\nstdout:\n{}\nstderr:\n{}\n=====\n",
            self.line(),
            self.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}
