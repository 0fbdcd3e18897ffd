//! The command line: parsing, configuration layering, and one module per role.

mod daemon;
#[macro_use]
pub(crate) mod term;
mod host;
mod keygen;
mod revoke;
mod up;

use clap::{Parser, Subcommand};
use confab::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// confab: an open re-creation of the Skype-era peer-to-peer network.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (repeatable; later files win). Default: config/confab.toml if present.
    #[arg(long, global = true, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `debug` or `confab=debug` (overrides log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole local network: a login server and super nodes in one process.
    Up(up::Args),
    /// Run the login server.
    LoginServer(daemon::LoginArgs),
    /// Run the super nodes of the configuration (supernode.nodes).
    Supernode(daemon::SupernodeArgs),
    /// Make key pairs and super-node credentials.
    #[command(subcommand)]
    Keygen(keygen::Command),
    /// A host: register, log in.
    Host(host::Args),
    /// Revoke a super node's (or a host's) credential: run on the login server's machine.
    Revoke(revoke::Args),
}

/// Runs the command; errors become one line on standard error and exit code 1.
pub fn run(cli: Cli) -> ExitCode {
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            term::esay!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(f) = cli.log_format {
        config.log.format = f;
    }
    if let Some(l) = &cli.log_level {
        config.log.level = l.clone();
    }
    // Hosts are interactive tools: quieter by default than the daemons.
    if matches!(cli.command, Command::Host(_) | Command::Keygen(_))
        && cli.log_level.is_none()
        && std::env::var_os("RUST_LOG").is_none()
    {
        config.log.level = "warn".into();
    }
    confab::telemetry::init_tracing(config.log.format, &config.log.level);
    let result = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Up(a) => up::run(a, config).await,
            Command::LoginServer(a) => daemon::login_server(a, config).await,
            Command::Supernode(a) => daemon::supernode(a, config).await,
            Command::Keygen(c) => keygen::run(c),
            Command::Host(a) => host::run(a, config).await,
            Command::Revoke(a) => revoke::run(a, config),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            term::esay!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
pub fn chain(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
    }
}
