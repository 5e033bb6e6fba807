//! The `dsyncd` binary: command line, configuration, logging and signals. The service itself is
//! in the library; the operator commands' output is in the modules next to this file.

mod inbox;
mod reconcile;
mod send;

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
    /// Look at the inbox, requeue dead events, re-apply stored ones.
    #[command(subcommand)]
    Inbox(inbox::InboxCommand),
    /// Compare the synced tables with WorkOS's API and repair them (needs WORKOS_API_KEY);
    /// prints the drift found.
    Reconcile(reconcile::ReconcileArgs),
    /// Sign and post a sample event (or a body of yours) as WorkOS would.
    Send(send::SendArgs),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Exit 0 if the service on this configuration's address is ready (for container health
    /// checks, where there is no curl).
    Healthcheck {
        /// The readiness URL; by default `/readyz` on this configuration's own address.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets redacted), or the error that stops it.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    dsyncd::telemetry::init(&config.log);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.worker_threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
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
        Command::Inbox(command) => inbox::run(&config, command).await,
        Command::Send(args) => send::run(&config, args).await,
        Command::Reconcile(args) => reconcile::run(&config, args).await,
        Command::Healthcheck { url } => {
            let url = url.unwrap_or_else(|| send::own_url(&config, "/readyz"));
            let response = send::client()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .with_context(|| format!("asking {url}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url} answered {}",
                response.status()
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            config.validate()?;
            config.database_url()?;
            print!("{}", toml::to_string_pretty(&config)?);
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
