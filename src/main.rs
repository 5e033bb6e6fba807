//! The `dsyncd` binary: command line, configuration, logging and signals. Everything else is in
//! the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dsyncd::app::{self, Role, Service};
use dsyncd::config::Config;
use tokio_util::sync::CancellationToken;

/// Receives WorkOS Directory Sync webhooks and keeps an exact copy of every directory in
/// Postgres.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); the environment overrides it. See config.example.toml.
    #[arg(long, global = true, env = "DSYNCD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: the webhook receiver, the worker, or both.
    Serve {
        /// Which halves to run in this process.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Apply the database migrations that are not applied yet.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    dsyncd::telemetry::init(&config.log);
    match cli.command {
        Command::Serve { role } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            Service::new(config)?.run(role, shutdown).await
        }
        Command::Migrate => {
            let pool = app::connect(&config)?;
            app::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
