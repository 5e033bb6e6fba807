//! A handler of your own next to the built-in one: it keeps an audit trail of user
//! deactivations in a table of the application's, written in the worker's transaction, so
//! each deactivation is recorded exactly once.
//!
//! ```sh
//! export DATABASE_URL=postgres://… WORKOS_WEBHOOK_SECRET=whsec_…
//! cargo run --example custom_handler
//! ```

use dsyncd::config::Config;
use dsyncd::{Event, EventHandler, HandlerError, Role, Service};
use serde::Deserialize;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// Records every `dsync.user.updated` that leaves a user inactive, and every
/// `dsync.user.deleted`.
struct Deactivations;

/// The part of a directory user this handler needs.
#[derive(Deserialize)]
struct User {
    id: String,
    state: Option<String>,
}

#[async_trait::async_trait]
impl EventHandler for Deactivations {
    fn name(&self) -> &'static str {
        "deactivations"
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(event_type, "dsync.user.updated" | "dsync.user.deleted")
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        let user: User = event.data_as()?;
        let deactivated =
            event.event == "dsync.user.deleted" || user.state.as_deref() == Some("inactive");
        if deactivated {
            // The event id makes the insert idempotent should the event be replayed.
            sqlx::query(
                "INSERT INTO app_deactivations (event_id, user_id, at) VALUES ($1, $2, $3)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&user.id)
            .bind(event.created_at)
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(None)?;
    dsyncd::telemetry::init(&config.log);
    let service = Service::new(config)?.with_handler(Deactivations);
    dsyncd::app::migrate(service.pool()).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS app_deactivations (
             event_id text PRIMARY KEY, user_id text NOT NULL, at timestamptz)",
    )
    .execute(service.pool())
    .await?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    service.run(Role::All, shutdown).await
}
