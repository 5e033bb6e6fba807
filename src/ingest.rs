//! Group commit: many concurrent deliveries share one insert and one commit.
//!
//! Each request hands its delivery to a queue and waits for the answer. One writer task takes
//! whatever is queued when it starts a flush (up to `ingest.max_batch`), inserts it all in one
//! statement, and only after the commit answers each request. One flush is in flight at a
//! time: while it runs, the next batch gathers, so under load commits grow instead of
//! multiplying, and with one sender each delivery is its own commit with no added wait.
//!
//! The writer also gives each delivery its turn in the claim order ([`Turns`]): its arrival,
//! unless its directory sends faster than `ingest.directory_share_per_sec`, in which case the
//! excess waits behind other directories' events (migration 0009).
//!
//! The insert expects new deliveries: a redelivery makes it fail and store nothing, and the
//! batch is inserted again with `ON CONFLICT DO NOTHING`, which sorts new from duplicate. That
//! check is left out while redeliveries are rare, since it costs Postgres a sixth of the insert
//! on the one path every delivery waits on.
//!
//! A request is never answered `Stored` before its own row is committed. If the database fails
//! or is slower than `database.timeout_ms`, every request of that flush gets an error (503),
//! even though some rows may have been committed: WorkOS then retries, and the retry is a
//! duplicate, which is a success.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::db;
use crate::inbox::{self, NewDelivery};
use crate::metrics::Metrics;

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed now.
    New,
    /// Already stored earlier (a redelivery); nothing was written.
    Duplicate,
}

/// Why a delivery was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The database failed or did not answer in time; the sender should retry.
    #[error("the database is unavailable")]
    Unavailable,
    /// Too many deliveries are waiting for a commit; the sender should retry.
    #[error("too many deliveries are waiting to be stored")]
    Overloaded,
    /// Postgres refused this delivery's data (it would never be stored). Holds the SQLSTATE
    /// code only: the message could quote the body.
    #[error("the database refused the event's data (SQLSTATE {0})")]
    Refused(String),
    /// The writer has stopped (the service is shutting down).
    #[error("the service is shutting down")]
    Stopped,
}

type Reply = Result<Stored, IngestError>;

struct Job {
    delivery: NewDelivery,
    /// The directory it is about, if it names one.
    directory: Option<String>,
    reply: oneshot::Sender<Reply>,
}

/// The handle requests use to store deliveries. Cheap to clone; the writer stops when the
/// last handle is dropped, after flushing what was queued.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Job>,
    timeout: Duration,
}

impl Ingest {
    /// Starts the writer task.
    pub fn start(pool: PgPool, config: &Config, metrics: Arc<Metrics>) -> (Ingest, JoinHandle<()>) {
        let (queue, jobs) = mpsc::channel(config.ingest.queue_capacity);
        let timeout = Duration::from_millis(config.database.timeout_ms);
        let writer = Writer {
            pool,
            jobs,
            max_batch: config.ingest.max_batch,
            timeout,
            metrics,
            expect_new: true,
            turns: Turns::new(config.ingest.directory_share_per_sec),
        };
        let task = tokio::spawn(writer.run());
        (Ingest { queue, timeout }, task)
    }

    /// Stores one delivery about `directory` (its turn is the writer's to give: any
    /// `turn_delay` it holds is replaced); returns once it is committed, or with the reason it
    /// is not.
    pub async fn store(&self, delivery: NewDelivery, directory: Option<String>) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job {
                delivery,
                directory,
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
            })?;
        // A flush ahead of ours may use its whole timeout before ours starts.
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(IngestError::Stopped),
            Err(_) => Err(IngestError::Unavailable),
        }
    }
}

struct Writer {
    pool: PgPool,
    jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Whether the next flush expects only new deliveries: redeliveries are rare, and an
    /// insert that need not look for them is cheaper. Off from a flush that met one until a
    /// flush without one, so a burst of retries does not pay for two inserts a flush.
    expect_new: bool,
    turns: Turns,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while self.jobs.recv_many(&mut batch, self.max_batch).await > 0 {
            // Requests that gave up (timed out, client gone) need no row.
            batch.retain(|job: &Job| !job.reply.is_closed());
            if !batch.is_empty() {
                self.flush(&mut batch).await;
            }
            batch.clear();
        }
    }

    async fn flush(&mut self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        for job in batch.iter_mut() {
            job.delivery.turn_delay = self.turns.next(job.directory.as_deref(), now);
        }
        // In id order: two receivers inserting the same ids (a retry reaching another replica)
        // then take their row locks in the same order, and cannot deadlock.
        let mut deliveries: Vec<&NewDelivery> = batch.iter().map(|job| &job.delivery).collect();
        deliveries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        match self.insert(&deliveries).await {
            Ok(new_ids) => answer_all(batch, &new_ids),
            // Postgres refused some row's data: the batch is all or nothing, so store each
            // delivery on its own to find the one to refuse.
            Err(InsertError::Refused(_)) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let reply = match self.insert(&[&job.delivery]).await {
                        Ok(new_ids) => Ok(stored_as(new_ids.is_empty())),
                        Err(error) => Err(error.into()),
                    };
                    let _ = job.reply.send(reply);
                }
            }
            Err(error) => {
                let error = IngestError::from(error);
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Stores deliveries and returns the ids that were new.
    async fn insert(&mut self, deliveries: &[&NewDelivery]) -> Result<Vec<String>, InsertError> {
        if self.expect_new {
            match self
                .timed(deliveries, inbox::insert_new(&self.pool, deliveries))
                .await
            {
                Ok(()) => {
                    return Ok(deliveries
                        .iter()
                        .map(|delivery| delivery.id.clone())
                        .collect());
                }
                Err(InsertError::Duplicate) => self.expect_new = false,
                Err(error) => return Err(error),
            }
        }
        let new_ids = self
            .timed(deliveries, inbox::insert(&self.pool, deliveries))
            .await?;
        self.expect_new = new_ids.len() == deliveries.len();
        Ok(new_ids)
    }

    /// Runs an insert of `deliveries` within `database.timeout_ms`.
    async fn timed<T>(
        &self,
        deliveries: &[&NewDelivery],
        insert: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, InsertError> {
        match tokio::time::timeout(self.timeout, insert).await {
            Ok(Ok(inserted)) => {
                self.metrics.committed(deliveries.len());
                Ok(inserted)
            }
            Ok(Err(error)) => Err(InsertError::classify(error)),
            Err(_) => {
                tracing::error!(
                    deliveries = deliveries.len(),
                    timeout_ms = self.timeout.as_millis() as u64,
                    "storing deliveries timed out"
                );
                Err(InsertError::Unavailable)
            }
        }
    }
}

/// Each directory's place in the claim order: a virtual clock that advances by one share
/// (`1 / directory_share_per_sec`) per delivery and never lags real time. A directory within
/// its share gets turns at its arrivals; one sending faster (a first sync of 200,000 users) gets
/// turns further and further ahead, so that events of other directories, arriving now, are
/// claimed before its excess. A receiver keeps its own clocks: with several, a directory's
/// share is one per receiver. Events that name no directory share one clock.
struct Turns {
    share: Duration,
    clocks: HashMap<String, Instant>,
    pruned: Instant,
}

impl Turns {
    /// How often clocks that real time has caught up with are forgotten.
    const PRUNE_EVERY: Duration = Duration::from_secs(10);

    fn new(share_per_sec: u32) -> Self {
        Turns {
            share: Duration::from_secs(1) / share_per_sec.max(1),
            clocks: HashMap::new(),
            pruned: Instant::now(),
        }
    }

    /// The turn delay of the next delivery about `directory`, received `now`.
    fn next(&mut self, directory: Option<&str>, now: Instant) -> Duration {
        if now.duration_since(self.pruned) >= Self::PRUNE_EVERY {
            // A clock behind real time gives the same turns as no clock.
            self.clocks.retain(|_, clock| *clock > now);
            self.pruned = now;
        }
        let directory = directory.unwrap_or("");
        let clock = match self.clocks.get_mut(directory) {
            Some(clock) => clock,
            None => self.clocks.entry(directory.to_owned()).or_insert(now),
        };
        let turn = (*clock).max(now);
        *clock = turn + self.share;
        turn - now
    }
}

fn stored_as(duplicate: bool) -> Stored {
    if duplicate {
        Stored::Duplicate
    } else {
        Stored::New
    }
}

/// Answers every job of a committed batch. The same id may be queued twice; the first is the
/// new one.
fn answer_all(batch: &mut Vec<Job>, new_ids: &[String]) {
    let mut new: HashSet<&str> = new_ids.iter().map(String::as_str).collect();
    for job in batch.drain(..) {
        let duplicate = !new.remove(job.delivery.id.as_str());
        let _ = job.reply.send(Ok(stored_as(duplicate)));
    }
}

enum InsertError {
    Unavailable,
    Refused(String),
    /// `inbox::insert_new` met a delivery already stored; nothing was stored.
    Duplicate,
}

impl InsertError {
    fn classify(error: sqlx::Error) -> InsertError {
        if db::is_unique_violation(&error) {
            return InsertError::Duplicate;
        }
        // SQLSTATE class 22 (data exception) and 54 (program limit, e.g. nesting) are about the
        // row itself; everything else is about the database.
        if let Some(db) = error.as_database_error() {
            if let Some(code) = db.code() {
                if code.starts_with("22") || code.starts_with("54") {
                    return InsertError::Refused(code.into_owned());
                }
            }
        }
        tracing::error!(error = %error, "storing deliveries failed");
        // (sqlx's Display of a connection or protocol error carries no row data.)
        InsertError::Unavailable
    }
}

impl From<InsertError> for IngestError {
    fn from(error: InsertError) -> Self {
        match error {
            // Only the insert that expects new deliveries meets one, and it falls back.
            InsertError::Unavailable | InsertError::Duplicate => IngestError::Unavailable,
            InsertError::Refused(message) => IngestError::Refused(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_within_its_share_keeps_arrival_order() {
        let mut turns = Turns::new(1000);
        let start = Instant::now();
        for n in 0..100 {
            let now = start + Duration::from_millis(2 * n);
            assert_eq!(turns.next(Some("directory_b"), now), Duration::ZERO);
        }
    }

    #[test]
    fn a_burst_beyond_the_share_goes_behind_what_others_send_meanwhile() {
        let mut turns = Turns::new(1000);
        let now = Instant::now();
        let burst: Vec<Duration> = (0..5000)
            .map(|_| turns.next(Some("directory_a"), now))
            .collect();
        assert_eq!(burst[0], Duration::ZERO);
        assert_eq!(burst[4999], Duration::from_millis(4999));
        // Another directory, and events without one, still go at once.
        assert_eq!(turns.next(Some("directory_b"), now), Duration::ZERO);
        assert_eq!(turns.next(None, now), Duration::ZERO);
        // A second later the burst's clock is 4 s ahead of real time; it catches up at the
        // share's pace, not at once.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            turns.next(Some("directory_a"), later),
            Duration::from_secs(4)
        );
        assert_eq!(turns.next(Some("directory_b"), later), Duration::ZERO);
    }

    #[test]
    fn clocks_caught_up_with_are_forgotten() {
        let mut turns = Turns::new(1000);
        let now = Instant::now();
        for directory in ["a", "b", "c"] {
            turns.next(Some(directory), now);
        }
        turns.next(Some("d"), now + Turns::PRUNE_EVERY);
        assert_eq!(turns.clocks.len(), 1);
        assert_eq!(
            turns.next(Some("a"), now + Turns::PRUNE_EVERY),
            Duration::ZERO
        );
    }
}
