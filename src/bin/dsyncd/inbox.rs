//! `dsyncd inbox`: what operators need to look at and mend the inbox.

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use dsyncd::config::Config;
use dsyncd::inbox::{self, Selection};

#[derive(Subcommand)]
pub enum InboxCommand {
    /// Rows per status, with the oldest arrival of each.
    Stats,
    /// The newest rows, without payloads.
    List {
        /// Only this status: pending, done, ignored or dead.
        #[arg(long)]
        status: Option<String>,
        /// Only this event type.
        #[arg(long)]
        event: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One row, with its payload.
    Show {
        /// The event id.
        id: String,
    },
    /// Requeue a dead (or waiting) event now, with a fresh count of attempts.
    Retry {
        /// The event id.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Requeue every dead event.
        #[arg(long)]
        dead: bool,
    },
    /// Re-apply stored events to the synced tables; safe, since applying is idempotent.
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("filter").required(true).multiple(true))]
pub struct ReplayArgs {
    /// These event ids (repeatable).
    #[arg(long = "id", group = "filter")]
    ids: Vec<String>,
    /// Received at or after this time (RFC 3339, or YYYY-MM-DD for midnight UTC).
    #[arg(long, group = "filter", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Received before this time.
    #[arg(long, group = "filter", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Events about this directory: its own, and its users', groups' and memberships'.
    #[arg(long, group = "filter")]
    directory: Option<String>,
    /// Only this event type.
    #[arg(long)]
    event: Option<String>,
    /// Every stored event.
    #[arg(long, group = "filter")]
    all: bool,
}

pub async fn run(config: &Config, command: InboxCommand) -> anyhow::Result<()> {
    let pool = dsyncd::app::connect(config)?;
    match command {
        InboxCommand::Stats => {
            let stats = inbox::stats(&pool).await?;
            println!("{:<12} {:>10}  {:<12} oldest", "status", "rows", "source");
            for row in stats {
                let oldest = row.oldest.map(|t| t.to_rfc3339()).unwrap_or_default();
                println!(
                    "{:<12} {:>10}  {:<12} {oldest}",
                    row.status, row.count, row.source
                );
            }
        }
        InboxCommand::List {
            status,
            event,
            limit,
        } => {
            let rows = inbox::list(&pool, status.as_deref(), event.as_deref(), limit).await?;
            println!(
                "{:<32} {:<28} {:<10} {:<10} {:>8}  {:<25}  last error",
                "id", "event", "status", "source", "attempts", "received"
            );
            for row in rows {
                let error = row.last_error.unwrap_or_default();
                println!(
                    "{:<32} {:<28} {:<10} {:<10} {:>8}  {:<25}  {}",
                    row.id,
                    row.event,
                    row.status,
                    row.source,
                    row.attempts,
                    row.received_at.to_rfc3339(),
                    error.lines().next().unwrap_or_default()
                );
            }
        }
        InboxCommand::Show { id } => {
            let Some(row) = inbox::get(&pool, &id).await? else {
                bail!("no event `{id}` in the inbox");
            };
            let summary = &row.summary;
            println!("id:           {}", summary.id);
            println!("event:        {}", summary.event);
            println!("status:       {}", summary.status);
            println!("source:       {}", summary.source);
            println!("attempts:     {}", summary.attempts);
            println!("received_at:  {}", summary.received_at.to_rfc3339());
            let time =
                |time: Option<DateTime<Utc>>| time.map(|t| t.to_rfc3339()).unwrap_or_default();
            println!("available_at: {}", time(row.available_at));
            println!("turn_at:      {}", time(row.turn_at));
            println!("finished_at:  {}", time(row.finished_at));
            println!(
                "last_error:   {}",
                summary.last_error.as_deref().unwrap_or("")
            );
            let payload: serde_json::Value =
                serde_json::from_str(&row.payload).context("payload")?;
            println!("payload:\n{}", serde_json::to_string_pretty(&payload)?);
        }
        InboxCommand::Retry { id, dead } => {
            let selection = if dead {
                Selection {
                    statuses: vec!["dead".to_owned()],
                    ..Selection::default()
                }
            } else {
                let id = id.expect("clap requires an id without --dead");
                Selection {
                    ids: vec![id],
                    statuses: vec!["dead".to_owned(), "pending".to_owned()],
                    ..Selection::default()
                }
            };
            let requeued = inbox::requeue(&pool, &selection).await?;
            if !dead && requeued == 0 {
                bail!("nothing to retry: the event is not in the inbox, or not dead or pending (use `inbox replay --id` to re-apply a finished one)");
            }
            println!("requeued {requeued} event(s)");
        }
        InboxCommand::Replay(args) => {
            let selection = Selection {
                ids: args.ids,
                since: args.since,
                until: args.until,
                directory: args.directory,
                event: args.event,
                statuses: Vec::new(),
            };
            let requeued = inbox::requeue(&pool, &selection).await?;
            println!("requeued {requeued} event(s) to be applied again");
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Some(time) = dsyncd::envelope::parse_timestamp(text) {
        return Ok(time);
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|date| {
            date.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
        })
        .map_err(|_| format!("`{text}` is not a time (use RFC 3339 or YYYY-MM-DD)"))
}
