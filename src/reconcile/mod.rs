//! Reconciliation: dsyncd finds and repairs what webhooks missed, from WorkOS's own API.
//!
//! - [`tail`]: the Events API tail stores the events no webhook delivered into the inbox,
//!   where the worker applies them like any delivery;
//! - [`snapshot`]: snapshot reconciliation lists every directory, user, group and membership
//!   and repairs the synced tables through the directory handler's rules;
//! - [`Reconciler`]: the loop a worker process runs, one process at a time (a session-level
//!   advisory lock on a connection of its own; when that process dies, another takes over).
//!
//! Nothing else in dsyncd knows about it beyond the start hook in `app` (which starts it in
//! the worker role when `workos.api_key` is set). Its own tables are in `store`.

pub mod snapshot;
pub mod store;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub use self::snapshot::{Drift, Options, Report};
pub use self::tail::{Restart, Step, Tail};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::workos_api::{ApiError, Client};

/// The advisory lock (session-level, single 64-bit key space) held by the one process that
/// reconciles.
pub const RUNNER_LOCK: i64 = 0x6473_796e_6364_7263;

/// Why reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// WorkOS did not answer as it should.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A synthetic event could not be built (a bug, or an object WorkOS should not list).
    #[error("cannot build a snapshot event: {0}")]
    Synthetic(String),
    /// The directory handler refused a synthetic event.
    #[error("applying snapshot events failed: {0}")]
    Apply(String),
}

impl ReconcileError {
    /// Whether retrying cannot help until an operator acts (a bad API key).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ReconcileError::Api(ApiError::Unauthorized | ApiError::Forbidden { .. })
        )
    }
}

/// The lock that makes one process at a time reconcile: held while the value lives, on a
/// connection of its own, and released when it is dropped or the process dies (Postgres ends
/// the session).
pub struct RunnerLock {
    conn: PgConnection,
}

impl RunnerLock {
    /// Takes the lock if no other process holds it.
    pub async fn try_acquire(pool: &PgPool) -> Result<Option<RunnerLock>, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let locked: bool = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
            RUNNER_LOCK
        )
        .fetch_one(&mut conn)
        .await?;
        Ok(locked.then_some(RunnerLock { conn }))
    }

    /// Whether the lock's session is still there (a lost connection loses the lock).
    pub async fn held(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

/// The reconciliation loop of a worker process.
pub struct Reconciler {
    pool: PgPool,
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
}

impl Reconciler {
    /// A reconciler for `config`, or `None` when no API key is set.
    pub fn new(
        config: &Config,
        pool: PgPool,
        metrics: Arc<Metrics>,
    ) -> Option<Result<Reconciler, ApiError>> {
        let key = config.workos_api_key()?.clone();
        Some(Client::new(&config.workos, key).map(|client| Reconciler {
            pool,
            client,
            config: config.clone(),
            metrics,
        }))
    }

    /// The tail this reconciler runs.
    pub fn tail(&self) -> Tail {
        Tail::new(
            self.pool.clone(),
            self.client.clone(),
            self.config.reconcile.cursor_max_age_days,
        )
    }

    /// Runs until `shutdown`: waits for the lock, then tails (and runs the snapshots it and
    /// `reconcile.snapshot_interval_secs` ask for) while holding it. A bad API key stops it
    /// with an error naming `WORKOS_API_KEY`; webhooks are not affected.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_secs(self.config.reconcile.events_interval_secs);
        tracing::info!("reconciliation started");
        while !shutdown.is_cancelled() {
            let lock = match RunnerLock::try_acquire(&self.pool).await {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot reach the database for the reconciliation lock");
                    None
                }
            };
            let Some(lock) = lock else {
                // Another process reconciles; take over if it dies.
                sleep_or_cancel(interval, &shutdown).await;
                continue;
            };
            tracing::info!("this process reconciles (it holds the lock)");
            match self.while_locked(lock, &shutdown).await {
                Ok(()) => {}
                Err(error) if error.is_fatal() => {
                    tracing::error!(error = %error, "reconciliation stopped; webhooks keep working");
                    return;
                }
                Err(error) => {
                    tracing::error!(error = %error, "reconciliation failed; retrying");
                    sleep_or_cancel(interval, &shutdown).await;
                }
            }
        }
    }

    async fn while_locked(
        &self,
        mut lock: RunnerLock,
        shutdown: &CancellationToken,
    ) -> Result<(), ReconcileError> {
        let interval = Duration::from_secs(self.config.reconcile.events_interval_secs);
        let tail = self.tail();
        while !shutdown.is_cancelled() {
            if !lock.held().await {
                tracing::warn!("lost the reconciliation lock's connection");
                return Ok(());
            }
            if self.periodic_snapshot_due().await? {
                tokio::select! {
                    report = self.snapshot() => { report?; }
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            let step = tokio::select! {
                step = tail.step() => step?,
                () = shutdown.cancelled() => return Ok(()),
            };
            match step {
                Step::Stored {
                    recovered, full, ..
                } => {
                    self.metrics.events_recovered(recovered as u64);
                    if !full {
                        sleep_or_cancel(interval, shutdown).await;
                    }
                }
                Step::NeedsSnapshot(reason) => {
                    match reason {
                        Restart::NoCursor => tracing::info!(
                            "the Events API tail has no cursor yet: a snapshot reconciliation runs first"
                        ),
                        Restart::TooOld { age_days } => tracing::error!(
                            cursor.age_days = age_days,
                            "the Events API cursor is older than reconcile.cursor_max_age_days: \
                             running a snapshot reconciliation and restarting the tail from it"
                        ),
                        Restart::Refused { status } => tracing::error!(
                            status,
                            "WorkOS refused the Events API cursor (expired or unknown): \
                             running a snapshot reconciliation and restarting the tail from it"
                        ),
                    }
                    tokio::select! {
                        report = self.restart() => { report?; }
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a snapshot reconciliation and restarts the tail from the moment it began: what
    /// the loop does when the tail has no cursor, or cannot use it.
    pub async fn restart(&self) -> Result<Report, ReconcileError> {
        let report = self.snapshot().await?;
        store::restart_cursor(&self.pool, report.started_at).await?;
        Ok(report)
    }

    async fn snapshot(&self) -> Result<Report, ReconcileError> {
        snapshot::run(&self.pool, &self.client, &Options::default()).await
    }

    async fn periodic_snapshot_due(&self) -> Result<bool, ReconcileError> {
        let interval = self.config.reconcile.snapshot_interval_secs;
        if interval == 0 {
            return Ok(false);
        }
        let Some(last) = store::last_full_run(&self.pool).await? else {
            // The first snapshot is the one the tail asks for.
            return Ok(false);
        };
        let due = last.started_at + chrono::Duration::seconds(interval as i64);
        Ok(Utc::now() >= due)
    }
}

/// What the metrics read from the database at each scrape (the same on every replica).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Age of the cursor's event (before the first one: of the tail's `range_start`), if the
    /// tail has started.
    pub cursor_age_seconds: Option<f64>,
    /// The last successful full snapshot run.
    pub last_run: Option<store::LastRun>,
}

/// Reads [`Status`].
pub async fn status(pool: &PgPool) -> Result<Status, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let cursor = store::cursor(&mut conn).await?;
    drop(conn);
    let cursor_age_seconds = cursor
        .map(|cursor| cursor.event_created_at.unwrap_or(cursor.range_start))
        .map(|at| (Utc::now() - at).num_milliseconds() as f64 / 1000.0);
    Ok(Status {
        cursor_age_seconds,
        last_run: store::last_full_run(pool).await?,
    })
}

/// Starts reconciliation for a worker process if `workos.api_key` is set; otherwise says once
/// that it is off.
pub fn start(
    config: &Config,
    pool: PgPool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    match Reconciler::new(config, pool, metrics) {
        None => {
            tracing::info!("reconciliation is off: WORKOS_API_KEY (workos.api_key) is not set");
            None
        }
        Some(Err(error)) => {
            tracing::error!(error = %error, "reconciliation is off");
            None
        }
        Some(Ok(reconciler)) => Some(tokio::spawn(reconciler.run(shutdown))),
    }
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
}
