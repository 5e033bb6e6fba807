//! The worker (process B): drains `workos.inbox` into the handlers.
//!
//! A loop opens a transaction, claims a batch in it (`FOR UPDATE SKIP LOCKED`: the rows stay
//! locked, nothing is written), applies it, finishes the rows and commits, and claims again
//! until the inbox is empty; then it waits for a `workos_inbox` notification (sent when the
//! receiver commits) or the polling interval, whichever comes first. Several workers may drain
//! one inbox at once. A worker that dies mid-batch leaves nothing behind: its transaction is
//! rolled back and the events are claimable again at once.
//!
//! If a batch fails, its writes are rolled back to a savepoint and every event is applied on its
//! own, in the same transaction, so one bad event never holds back the others; a failed event
//! is retried with exponential backoff and jitter, and ends `dead` after `worker.max_attempts`
//! (at once if the handler rejects it as unappliable). Stopping is two-phase: on shutdown no
//! new batch is claimed, and the batch in flight gets `worker.shutdown_grace_ms` to finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{Executor, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::handler::{Event, EventHandler, HandlerError};
use crate::inbox::{self, ClaimOrder, Claimed, Finish};
use crate::metrics::Metrics;

/// The channel the inbox trigger notifies on.
pub const INBOX_CHANNEL: &str = "workos_inbox";

/// How often the first claim loop vacuums the queue while there is work ([`inbox::vacuum_queue`]).
const QUEUE_VACUUM_INTERVAL: Duration = Duration::from_secs(1);

/// Drains the inbox into a set of handlers.
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    handlers: Vec<Arc<dyn EventHandler>>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
}

/// What one claimed batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows finished `done` or `ignored`.
    pub finished: usize,
    /// Rows that failed this attempt (retried later, or dead).
    pub failed: usize,
}

impl Worker {
    /// A worker with no handlers yet: every event would end `ignored`.
    pub fn new(pool: PgPool, config: WorkerConfig) -> Self {
        Worker {
            pool,
            handlers: Vec::new(),
            config,
            metrics: Metrics::new(),
        }
    }

    /// Reports into `metrics` (shared with the receiver) instead of a set of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds a handler; every handler that [`handles`](EventHandler::handles) an event gets it.
    pub fn with_handler(mut self, handler: impl EventHandler) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Adds a handler that is shared with other workers.
    pub fn with_shared_handler(mut self, handler: Arc<dyn EventHandler>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// Claims one batch (the oldest events), applies it and commits; an empty report when
    /// nothing was due.
    pub async fn run_once(&self) -> Result<BatchReport, sqlx::Error> {
        self.run_batch(ClaimOrder::OldestFirst).await
    }

    async fn run_batch(&self, order: ClaimOrder) -> Result<BatchReport, sqlx::Error> {
        let mut tx = self.pool.begin_with(inbox::BEGIN).await?;
        let lease = Duration::from_secs(self.config.lease_secs);
        let claimed = inbox::claim(&mut tx, self.config.batch_size.into(), lease, order).await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(BatchReport::default());
        }
        let span = tracing::info_span!("batch", events = claimed.len());
        let (report, applied) = self.process(&mut tx, &claimed).instrument(span).await?;
        tx.commit().await?;
        self.count_applied(&applied);
        Ok(report)
    }

    /// Applies batches until none is available (events waiting for a retry stay). For tests
    /// and tools that want the inbox drained now, without the polling loop.
    pub async fn run_until_empty(&self) -> Result<BatchReport, sqlx::Error> {
        let mut total = BatchReport::default();
        loop {
            let report = self.run_once().await?;
            if report.claimed == 0 {
                // Then the work the batches left for later (a large directory's deletion).
                if self.step_handlers().await {
                    continue;
                }
                return Ok(total);
            }
            total.claimed += report.claimed;
            total.finished += report.finished;
            total.failed += report.failed;
        }
    }

    /// Runs until `shutdown`: `worker.concurrency` loops claim while there is work, otherwise
    /// wait for a notification or the polling interval. A database outage is logged and waited
    /// out. Returns when every loop has stopped (see the module doc for the two phases).
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            handlers = self.handlers.len(),
            concurrency = self.config.concurrency,
            "worker started"
        );
        let wake = Arc::new(Notify::new());
        let listening = tokio::spawn(listen(self.pool.clone(), wake.clone(), shutdown.clone()));
        let loops: Vec<_> = (0..self.config.concurrency.max(1))
            .map(|index| {
                // Every other loop takes from the newest end, so that through a backlog two
                // loops do not claim past each other's locked rows.
                let order = if index % 2 == 0 {
                    ClaimOrder::OldestFirst
                } else {
                    ClaimOrder::NewestFirst
                };
                tokio::spawn(
                    self.clone()
                        .drain(index == 0, order, wake.clone(), shutdown.clone()),
                )
            })
            .collect();
        for drain in loops {
            let _ = drain.await;
        }
        listening.abort();
        tracing::info!("worker stopped");
    }

    /// One claim loop. Several run side by side: each has a database connection of its own,
    /// so one loop claims and writes while the other's batch is in Postgres. The first one
    /// also deletes expired rows, one [`Sweep`] batch before each of its claims while a sweep
    /// is under way: a claim then waits for a thousand deletes at most, never for a whole sweep
    /// (a day's expired rows, after the worker was down), and retention adds no connection and
    /// no concurrent statement to what the claims already run. It runs the handlers' steps
    /// ([`EventHandler::step`]) the same way: one before each claim while they find work, and
    /// a look once a polling interval otherwise.
    async fn drain(
        self,
        sweeps: bool,
        order: ClaimOrder,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let retention_interval = Duration::from_secs(self.config.retention_interval_secs);
        let mut last_sweep: Option<Instant> = None;
        let mut sweep: Option<Sweep> = None;
        // Whether the handlers' steps found work last time, and when they last looked.
        let mut stepping = false;
        let mut last_step: Option<Instant> = None;
        // Whether the last batch claimed anything, and when the queue was last vacuumed.
        let mut busy = false;
        let mut last_vacuum = Instant::now();
        while !shutdown.is_cancelled() {
            if sweeps
                && sweep.is_none()
                && last_sweep.is_none_or(|at| at.elapsed() >= retention_interval)
            {
                last_sweep = Some(Instant::now());
                sweep = Some(Sweep::new(self.config.retention_days));
            }
            if let Some(mut current) = sweep.take() {
                match current.step(&self.pool).await {
                    Ok(true) => sweep = Some(current),
                    Ok(false) => current.report(self.config.retention_days),
                    Err(error) => {
                        tracing::warn!(error = %error, "deleting expired inbox rows failed");
                    }
                }
            }
            if sweeps && (stepping || last_step.is_none_or(|at| at.elapsed() >= poll)) {
                last_step = Some(Instant::now());
                stepping = self.step_handlers().await;
            }
            if sweeps && busy && last_vacuum.elapsed() >= QUEUE_VACUUM_INTERVAL {
                last_vacuum = Instant::now();
                if let Err(error) = inbox::vacuum_queue(&self.pool).await {
                    tracing::warn!(error = %error, "vacuuming the inbox queue failed");
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            // Registered before claiming, so that a notification arriving while the claim
            // finds nothing still wakes this loop.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let batch = self.run_batch(order);
            tokio::pin!(batch);
            let outcome = tokio::select! {
                outcome = &mut batch => outcome,
                () = shutdown.cancelled() => match tokio::time::timeout(grace, batch).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // Dropping the batch rolled its transaction back; its events are
                        // claimable again.
                        tracing::warn!(grace_ms = grace.as_millis() as u64, "batch abandoned at shutdown");
                        break;
                    }
                },
            };
            let idle = match outcome {
                Ok(report) => report.claimed == 0,
                Err(error) => {
                    tracing::error!(error = %error, "a batch failed and was rolled back");
                    true
                }
            };
            busy = !idle;
            // A sweep or steps under way go on at once, however idle the inbox.
            if idle && sweep.is_none() && !stepping {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(poll) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// Runs one [`EventHandler::step`] of each handler, each in a transaction of its own, and
    /// returns whether any found work. A failed step is logged and rolled back; the next look
    /// tries again.
    async fn step_handlers(&self) -> bool {
        let mut found = false;
        for handler in &self.handlers {
            let stepped = async {
                let mut tx = self.pool.begin().await?;
                let more = handler.step(&mut tx).await?;
                tx.commit().await?;
                Ok::<bool, HandlerError>(more)
            };
            match stepped.await {
                Ok(more) => found |= more,
                Err(error) => {
                    tracing::warn!(handler = handler.name(), error = %error, "a handler's step failed");
                }
            }
        }
        found
    }

    /// Deletes `done` and `ignored` rows past `worker.retention_days`, a thousand at a time so
    /// that no statement holds many locks, one batch after another (the claim loop instead
    /// takes one between claims). Returns how many were deleted.
    pub async fn sweep(&self) -> Result<u64, sqlx::Error> {
        let mut sweep = Sweep::new(self.config.retention_days);
        while sweep.step(&self.pool).await? {}
        let deleted = sweep.deleted;
        sweep.report(self.config.retention_days);
        Ok(deleted)
    }

    /// Applies a claimed batch in the transaction `conn` is in and records every outcome
    /// there; returns the report and the rows applied.
    async fn process<'a>(
        &self,
        conn: &mut PgConnection,
        claimed: &'a [Claimed],
    ) -> Result<(BatchReport, Vec<&'a Claimed>), sqlx::Error> {
        let mut report = BatchReport {
            claimed: claimed.len(),
            ..BatchReport::default()
        };
        let mut events = Vec::with_capacity(claimed.len());
        for row in claimed {
            match Event::from_payload(&row.payload) {
                Ok(event) => events.push((row, event)),
                Err(error) => {
                    let error =
                        HandlerError::Rejected(format!("stored payload is not an event: {error}"));
                    self.record_failure(conn, row, &error).await?;
                    report.failed += 1;
                }
            }
        }
        if events.is_empty() {
            return Ok((report, Vec::new()));
        }
        match self.apply(conn, &events).await {
            Ok(finishes) => {
                inbox::finish(conn, &finishes).await?;
                report.finished += finishes.len();
                return Ok((report, events.iter().map(|(row, _)| *row).collect()));
            }
            Err(error) if events.len() > 1 => {
                tracing::warn!(error = %error, "batch failed; applying its events one by one");
            }
            Err(error) => {
                self.record_failure(conn, events[0].0, &error).await?;
                report.failed += 1;
                return Ok((report, Vec::new()));
            }
        }
        let mut finishes = Vec::with_capacity(events.len());
        for (row, event) in &events {
            let span =
                tracing::info_span!("event", event.id = %event.id, event.type = %event.event);
            match self
                .apply(conn, std::slice::from_ref(&(*row, event.clone())))
                .instrument(span)
                .await
            {
                Ok(finished) => finishes.extend(finished),
                Err(error) => {
                    self.record_failure(conn, row, &error).await?;
                    report.failed += 1;
                }
            }
        }
        inbox::finish(conn, &finishes).await?;
        report.finished += finishes.len();
        Ok((report, finishes.iter().map(|(row, _)| *row).collect()))
    }

    fn count_applied(&self, applied: &[&Claimed]) {
        let now = Utc::now();
        for row in applied {
            let lag = (now - row.received_at).to_std().unwrap_or_default();
            self.metrics.applied(&row.event, lag);
            tracing::debug!(event.id = %row.id, event.type = %row.event, lag_ms = lag.as_millis() as u64, "event applied");
        }
    }

    /// Applies events inside a savepoint, and returns how each of their rows is to be finished:
    /// if anything fails, what they wrote is undone and the claim (the transaction around it)
    /// still holds.
    ///
    /// Either way the savepoint is released, and the caller finishes the rows (or records the
    /// failure) at the top level of the transaction that claimed them. `ROLLBACK TO SAVEPOINT`
    /// alone would leave the savepoint open, and every later statement of the batch nested in
    /// it, one level deeper for each event that fails. And a row locked by a transaction and
    /// updated by one of its subtransactions gets a MultiXact for its `xmax`: one more to
    /// freeze, and a dead version that index scans cannot tell is dead, so that they never
    /// mark its entry in the claim index as such and every claim walks past it again until the
    /// page is pruned or vacuumed (BENCHMARKS.md, "Scale").
    async fn apply<'a>(
        &self,
        conn: &mut PgConnection,
        events: &[(&'a Claimed, Event)],
    ) -> Result<Vec<(&'a Claimed, Finish)>, HandlerError> {
        conn.execute("SAVEPOINT apply").await?;
        match self.apply_all(conn, events).await {
            Ok(finishes) => {
                conn.execute("RELEASE SAVEPOINT apply").await?;
                Ok(finishes)
            }
            Err(error) => {
                conn.execute("ROLLBACK TO SAVEPOINT apply; RELEASE SAVEPOINT apply")
                    .await?;
                Err(error)
            }
        }
    }

    async fn apply_all<'a>(
        &self,
        conn: &mut PgConnection,
        events: &[(&'a Claimed, Event)],
    ) -> Result<Vec<(&'a Claimed, Finish)>, HandlerError> {
        let mut finishes: Vec<(&Claimed, Finish)> = events
            .iter()
            .map(|(row, _)| (*row, Finish::Ignored))
            .collect();
        for handler in &self.handlers {
            let mut mine = Vec::new();
            for (index, (_, event)) in events.iter().enumerate() {
                if handler.handles(&event.event) {
                    mine.push(event);
                    finishes[index].1 = Finish::Done;
                }
            }
            if !mine.is_empty() {
                handler.handle_batch(conn, &mine).await?;
            }
        }
        Ok(finishes)
    }

    async fn record_failure(
        &self,
        conn: &mut PgConnection,
        row: &Claimed,
        error: &HandlerError,
    ) -> Result<(), sqlx::Error> {
        let attempts = row.attempts + 1;
        let permanent = matches!(error, HandlerError::Rejected(_));
        let retry_at = if permanent || attempts >= self.config.max_attempts as i32 {
            None
        } else {
            let delay = backoff(&self.config, attempts as u32, rand::random::<f64>());
            Some(Utc::now() + delay)
        };
        let message = error.to_string();
        self.metrics.failed(&row.event);
        if retry_at.is_none() {
            tracing::error!(event.id = %row.id, event.type = %row.event, attempts, error = %message, "event is dead");
        } else {
            tracing::warn!(event.id = %row.id, event.type = %row.event, attempts, error = %message, "event failed; will retry");
        }
        inbox::fail(conn, row, &message, retry_at).await
    }
}

/// Retention's way through the expired rows (`done` and `ignored`, finished before
/// `worker.retention_days` ago when it started), a thousand at a time, the oldest first.
struct Sweep {
    before: DateTime<Utc>,
    deleted: u64,
}

impl Sweep {
    const BATCH: i64 = 1000;

    fn new(retention_days: u32) -> Self {
        Sweep {
            before: Utc::now() - chrono::Duration::days(retention_days.into()),
            deleted: 0,
        }
    }

    /// Deletes the next batch; whether a full one was deleted (and more may be left).
    async fn step(&mut self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let batch = inbox::purge_finished(pool, self.before, Self::BATCH).await?;
        self.deleted += batch;
        Ok(batch == Self::BATCH as u64)
    }

    fn report(self, retention_days: u32) {
        if self.deleted > 0 {
            tracing::info!(
                deleted = self.deleted,
                retention_days,
                "deleted expired inbox rows"
            );
        }
    }
}

/// Wakes the claim loops on every `workos_inbox` notification until `shutdown`. If the
/// notification connection fails, the loops still poll; it is opened again after a pause.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let pause = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for new deliveries; polling");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(INBOX_CHANNEL).await {
            tracing::warn!(error = %error, "cannot listen for new deliveries; polling");
            tokio::time::sleep(pause).await;
            continue;
        }
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    Ok(_) => wake.notify_waiters(),
                    Err(error) => {
                        tracing::warn!(error = %error, "lost the notification connection; polling");
                        // Deliveries committed while it was down are found by the next claim.
                        wake.notify_waiters();
                        tokio::time::sleep(pause).await;
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// The delay before retry number `attempt` (1-based): `backoff_base_ms` doubled per attempt,
/// capped at `backoff_max_secs`, then scaled by a jitter in `[0.5, 1.0)` (`unit` in `[0, 1)`).
pub fn backoff(config: &WorkerConfig, attempt: u32, unit: f64) -> chrono::Duration {
    let base = config.backoff_base_ms as f64;
    let cap = (config.backoff_max_secs * 1000) as f64;
    let exponential = base * 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
    let millis = exponential.min(cap) * (0.5 + unit.clamp(0.0, 1.0) / 2.0);
    chrono::Duration::milliseconds(millis as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let config = WorkerConfig {
            backoff_base_ms: 1000,
            backoff_max_secs: 60,
            ..WorkerConfig::default()
        };
        let ms = |attempt, unit| backoff(&config, attempt, unit).num_milliseconds();
        assert_eq!(ms(1, 1.0), 1000);
        assert_eq!(ms(1, 0.0), 500);
        assert_eq!(ms(2, 1.0), 2000);
        assert_eq!(ms(3, 1.0), 4000);
        assert_eq!(ms(7, 1.0), 60_000);
        assert_eq!(ms(1000, 1.0), 60_000);
        assert!((500..=1000).contains(&ms(1, 0.37)));
    }
}
