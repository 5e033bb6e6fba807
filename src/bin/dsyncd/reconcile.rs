//! `dsyncd reconcile`: one snapshot reconciliation on demand, and its drift report.

use anyhow::Context;
use dsyncd::config::Config;
use dsyncd::reconcile::{snapshot, Drift, Options};
use dsyncd::workos_api::Client;

#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// Only this directory (its users, groups and memberships).
    #[arg(long)]
    directory: Option<String>,
    /// Find and print the drift, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the reconciliation; an error only when it could not run to the end (the drift
/// itself is not an error).
pub async fn run(config: &Config, args: ReconcileArgs) -> anyhow::Result<()> {
    let key = config
        .workos_api_key()
        .context("reconciliation needs an API key: set WORKOS_API_KEY (workos.api_key)")?
        .clone();
    config.validate_workos()?;
    let client = Client::new(&config.workos, key)?;
    let pool = dsyncd::app::connect(config)?;
    let options = Options {
        directory_id: args.directory,
        dry_run: args.dry_run,
    };
    let report = snapshot::run(&pool, &client, &options).await?;
    print!("{}", table(&report.drift));
    if report.dry_run {
        println!("dry run: nothing was changed");
    } else if report.drift.is_empty() {
        println!("no drift: the synced tables match WorkOS");
    } else {
        println!("repaired");
    }
    Ok(())
}

/// The drift as a table, one line per table.
fn table(drift: &Drift) -> String {
    let mut text = format!(
        "{:<12} {:>8} {:>8} {:>8}\n",
        "table", "missing", "stale", "deleted"
    );
    for (table, counts) in [
        ("directories", drift.directories),
        ("users", drift.users),
        ("groups", drift.groups),
        ("memberships", drift.memberships),
    ] {
        text.push_str(&format!(
            "{table:<12} {:>8} {:>8} {:>8}\n",
            counts.missing, counts.stale, counts.deleted
        ));
    }
    text
}
