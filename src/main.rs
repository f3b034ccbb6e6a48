//! The `pgwarden` binary: parse the command line, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgwarden::cli::exit;
use pgwarden::server::StartError;

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "A TLS-terminating PostgreSQL proxy that gives every session a fresh database credential"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and report every problem in it.
    CheckConfig {
        #[arg(long, short, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Print a SCRAM-SHA-256 verifier (for [[users]] scram_verifier), for a new
    /// random password or one read from standard input.
    ScramVerifier {
        #[arg(long)]
        password_stdin: bool,
    },
    /// Exit 0 when the admin listener answers 2xx at URL, else 1 (a probe for
    /// container health checks; the runtime image has no HTTP client).
    Healthcheck {
        #[arg(long, default_value = pgwarden::cli::DEFAULT_HEALTHCHECK_URL)]
        url: String,
        /// How long to wait for the answer (e.g. 5s, 500ms).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Check the security checklist against the live database: one line per
    /// check; exit 0 when nothing fails, 1 when a check fails, 2 when the audit
    /// could not run.
    Audit {
        #[arg(long, short, env = "PGWARDEN_CONFIG")]
        config: PathBuf,
        /// Audit only the route for this database name.
        #[arg(long)]
        route: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Connect as another [credentials.*] source, or as an account given
        /// by a DSN without a password (from PGPASSWORD, a passfile or
        /// --password-file).
        #[arg(long = "as", value_name = "DSN-OR-CREDENTIAL-SOURCE")]
        auditor: Option<String>,
        /// A file holding the password of the --as DSN's account.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Take an encrypted backup of a [backup.<target>] with a fresh,
    /// short-lived credential; or `backup verify` one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Backup {
        #[command(subcommand)]
        action: Option<BackupAction>,
        #[arg(long, short, env = "PGWARDEN_CONFIG", required = true)]
        config: Option<PathBuf>,
        /// The [backup.<target>] to run.
        #[arg(long, required = true)]
        target: Option<String>,
    },
    /// Decrypt a backup into pg_restore (a database you name) or to standard output.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["dbname", "stdout"])))]
    Restore {
        /// The age identity file (AGE-SECRET-KEY-1…) of one of the backup's recipients.
        #[arg(long)]
        identity: PathBuf,
        /// pg_restore's connection string, without a password (PGPASSWORD,
        /// PGPASSFILE or the prompt give it).
        #[arg(long)]
        dbname: Option<String>,
        /// Write the decrypted dump to standard output instead.
        #[arg(long)]
        stdout: bool,
        #[arg(long, default_value = "pg_restore")]
        pg_restore: PathBuf,
        /// The encrypted backup (…dump.age).
        backup: PathBuf,
        /// More pg_restore options, after `--` (e.g. -- --no-owner --single-transaction).
        #[arg(last = true)]
        pg_restore_args: Vec<String>,
    },
    /// Ask a running `pgwarden run` to reload its configuration (SIGHUP), for
    /// containers without a `kill`: `kubectl exec <pod> -c pgwarden -- pgwarden reload --pid 1`.
    Reload {
        /// The process id of `pgwarden run` (1 in its own container).
        #[arg(long)]
        pid: i32,
    },
    /// Run pgwarden against a throwaway local PostgreSQL with the built-in
    /// credential source: no Vault, nothing to configure.
    Dev {
        /// Port for pgwarden to listen on, on 127.0.0.1.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// The directory of PostgreSQL's server programs (initdb, pg_ctl,
        /// postgres), e.g. a PGDG, Homebrew or Nix install; default: found
        /// through pg_config, in /usr/lib/postgresql/*/bin or on PATH, and
        /// installed from the distribution when none is (Debian/Ubuntu).
        #[arg(long, value_name = "DIR")]
        postgres_bin: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackupAction {
    /// Decrypt a backup into `pg_restore --list`: prove it is intact and
    /// readable, restoring nothing.
    Verify {
        /// The age identity file of one of the backup's recipients.
        #[arg(long)]
        identity: PathBuf,
        #[arg(long, default_value = "pg_restore")]
        pg_restore: PathBuf,
        /// The encrypted backup (…dump.age).
        backup: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; a wrong command line is EX_USAGE.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    ExitCode::from(execute(cli.command) as u8)
}

/// Runs one command; returns its exit code.
fn execute(command: Command) -> i32 {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    match command {
        Command::CheckConfig { config } => pgwarden::cli::check_config(&config, &mut out, &mut err),
        Command::ScramVerifier { password_stdin } => {
            pgwarden::cli::scram_verifier(password_stdin, &mut out, &mut err)
        }
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout),
        Command::Audit {
            config,
            route,
            format,
            auditor,
            password_file,
        } => {
            let format = match format.as_str() {
                "json" => pgwarden::audit::command::Format::Json,
                _ => pgwarden::audit::command::Format::Table,
            };
            let options = pgwarden::audit::command::Options {
                config,
                route,
                format,
                auditor,
                password_file,
            };
            in_runtime(pgwarden::cli::audit(options, &mut out, &mut err))
        }
        Command::Run { config } => in_runtime(run(config)),
        Command::Reload { pid } => pgwarden::cli::reload(pid, &mut err),
        Command::Dev { port, postgres_bin } => in_runtime(pgwarden::dev::run(port, postgres_bin)),
        Command::Backup {
            action,
            config,
            target,
        } => backup(action, config, target),
        Command::Restore {
            identity,
            dbname,
            stdout,
            pg_restore,
            backup,
            pg_restore_args,
        } => {
            pgwarden::logging::init(Default::default(), "warn");
            let to = match (&dbname, stdout) {
                (Some(db), false) => pgwarden::backup::command::RestoreTo::Database {
                    dbname: db,
                    extra: &pg_restore_args,
                },
                _ => pgwarden::backup::command::RestoreTo::Stdout,
            };
            pgwarden::backup::command::restore(&backup, &identity, &pg_restore, to, &mut err)
        }
    }
}

/// `pgwarden healthcheck`, on a runtime of its own thread.
fn healthcheck(url: &str, timeout: std::time::Duration) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(pgwarden::cli::healthcheck(
            url,
            timeout,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Err(e) => {
            eprintln!("unhealthy: cannot start the async runtime: {e}");
            1
        }
    }
}

/// `pgwarden backup --config --target`, or `pgwarden backup verify`.
fn backup(action: Option<BackupAction>, config: Option<PathBuf>, target: Option<String>) -> i32 {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    match (action, config, target) {
        (
            Some(BackupAction::Verify {
                identity,
                pg_restore,
                backup,
            }),
            _,
            _,
        ) => {
            pgwarden::logging::init(Default::default(), "warn");
            pgwarden::backup::command::verify(&backup, &identity, &pg_restore, &mut out, &mut err)
        }
        (None, Some(config), Some(target)) => in_runtime(pgwarden::backup::command::backup(
            &config, &target, &mut out, &mut err,
        )),
        (None, _, _) => {
            eprintln!("pgwarden backup needs --config and --target");
            2
        }
    }
}

/// How long the runtime waits, once `main` has returned, for blocking work
/// still running (dropping it would wait forever: a killed pg_dump whose
/// output something else holds open never lets its reader return).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `main` on a multi-threaded runtime.
fn in_runtime(main: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(main);
            rt.shutdown_timeout(RUNTIME_SHUTDOWN);
            code
        }
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            exit::SOFTWARE
        }
    }
}

async fn run(path: PathBuf) -> i32 {
    if let Err(e) = std::fs::metadata(&path) {
        eprintln!("cannot read configuration file {}: {e}", path.display());
        return exit::NO_INPUT;
    }
    let config = match pgwarden::config::load(&path, std::env::vars()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: {} problem(s):", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  - {e}");
            }
            return exit::CONFIG;
        }
    };
    pgwarden::logging::init(config.log.format, &config.log.level);
    let signals = match pgwarden::daemon::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals");
            return exit::OS_ERROR;
        }
    };
    let server = match pgwarden::server::Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "pgwarden could not start");
            return match e {
                StartError::Bind { .. } => exit::OS_ERROR,
                StartError::Build(_) => exit::CONFIG,
            };
        }
    };
    pgwarden::daemon::supervise(server, pgwarden::daemon::ConfigSource { path }, signals).await;
    exit::OK
}
