//! Java programs under `tests/java/` run against pgjdbc, the driver Keycloak uses.
//!
//! Each program is one source file started with `java -cp /usr/share/java/postgresql.jar
//! File.java …` (single-file source launch, so there is no build step), and prints its results
//! as `key=value` lines that the tests assert. A password goes to the program through the
//! `PGWARDEN_TEST_PASSWORD` environment variable of that child only, never its command line.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::harness::GENEROUS;

/// The PostgreSQL JDBC driver Debian's `libpostgresql-jdbc-java` installs.
pub const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// What a Java program printed.
#[derive(Debug)]
pub struct JavaRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl JavaRun {
    /// The value of the one `key=value` line for `key`; fails the test if there is none or
    /// there are several.
    pub fn get(&self, key: &str) -> &str {
        let values: Vec<&str> = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect();
        assert_eq!(
            values.len(),
            1,
            "expected one `{key}=` line from the Java program:\n{self}"
        );
        values[0]
    }

    /// Fails the test with everything the program printed unless it succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success, "the Java program failed:\n{self}");
        self
    }
}

impl std::fmt::Display for JavaRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        )
    }
}

fn source(program: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/java")
        .join(format!("{program}.java"))
}

fn command(program: &str, args: &[&str], password: Option<&str>) -> Command {
    let mut cmd = Command::new("java");
    // A small heap and the quick compiler only: several JVMs may run at once on two cores.
    cmd.args(["-Xmx256m", "-XX:TieredStopAtLevel=1"])
        .arg("-cp")
        .arg(PGJDBC_JAR)
        .arg(source(program))
        .args(args)
        .env_remove("PGWARDEN_TEST_PASSWORD")
        .kill_on_drop(true);
    if let Some(p) = password {
        cmd.env("PGWARDEN_TEST_PASSWORD", p);
    }
    cmd
}

/// Runs `tests/java/<program>.java` with `args` to the end.
pub async fn run(program: &str, args: &[&str], password: Option<&str>) -> JavaRun {
    let out = tokio::time::timeout(GENEROUS * 2, command(program, args, password).output())
        .await
        .unwrap_or_else(|_| panic!("{program}.java did not finish"))
        .expect("java runs (a JDK and libpostgresql-jdbc-java installed?)");
    JavaRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A Java program the test talks to while it runs: it reads lines from the program's
/// stdout and writes lines to its stdin.
pub struct Interactive {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Interactive {
    pub fn start(program: &str, args: &[&str], password: Option<&str>) -> Interactive {
        let mut child = command(program, args, password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("java runs (a JDK and libpostgresql-jdbc-java installed?)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Interactive {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one is `key=value`; returns the value.
    pub async fn wait_for(&mut self, key: &str) -> String {
        loop {
            let line = tokio::time::timeout(GENEROUS * 2, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no `{key}=` line; read so far: {:?}", self.seen))
                .expect("read the program's output");
            let Some(line) = line else {
                panic!(
                    "the program ended before `{key}=`; it printed {:?}",
                    self.seen
                );
            };
            self.seen.push(line.clone());
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                return v.to_owned();
            }
        }
    }

    pub async fn send_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the program");
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the program to end; everything it printed.
    pub async fn finish(mut self) -> JavaRun {
        while let Some(line) = tokio::time::timeout(GENEROUS * 2, self.lines.next_line())
            .await
            .expect("the program ends")
            .expect("read the program's output")
        {
            self.seen.push(line);
        }
        let out = tokio::time::timeout(GENEROUS, self.child.wait_with_output())
            .await
            .expect("the program exits")
            .unwrap();
        JavaRun {
            success: out.status.success(),
            stdout: self.seen.join("\n"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
