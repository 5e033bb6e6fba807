//! Lookups by id that arrive together share one statement.
//!
//! SDKs fetch objects one at a time (`getUser`, `getGroup`, `getDirectory`), and an app under
//! load sends many such requests at once. Finding one row is the least of a statement's cost
//! in Postgres: its executor's set-up, its round trip and the wake-ups of both processes cost
//! more than the row (BENCHMARKS.md, "The read API"). So a lookup joins its kind's queue, and
//! whichever waiting request gets one of the statement slots next takes up to [`MAX_IDS`]
//! queued lookups (one key's scope at a time) into one `id IN (…)` statement, in a task of
//! its own, and answers each of them.
//!
//! With one request at a time nothing waits: it finds a slot free, and runs its statement for
//! its own id itself. Under load the slots are busy and lookups gather while they wait for
//! one, as deliveries do for the receiver's group commit (`ingest`). A request that ends
//! without its answer (it gave up, or its client hung up) takes its lookup out of the queue,
//! or out of the statement that took it already.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::auth::Scope;
use super::error::ApiError;

/// The most ids one statement looks up.
pub const MAX_IDS: usize = 64;

/// A row that can be looked up by id, many at a time (its statement is in `sql`).
pub trait ById: Clone + Send + Sync + Sized + 'static {
    /// The row's id.
    fn id(&self) -> &str;

    /// The live rows among `ids` that `scope` may see, in any order.
    fn fetch(
        pool: PgPool,
        scope: Scope,
        ids: Vec<String>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self>>> + Send;
}

type Reply<R> = Result<Option<R>, Arc<sqlx::Error>>;

struct Job<R> {
    /// Its place in the queue: lookups are taken in this order.
    seq: u64,
    scope: Scope,
    id: String,
    reply: oneshot::Sender<Reply<R>>,
}

struct Queue<R> {
    jobs: VecDeque<Job<R>>,
    next_seq: u64,
}

/// The lookups of one kind of row. Cheap to clone.
pub struct Lookups<R> {
    pool: PgPool,
    queue: Arc<Mutex<Queue<R>>>,
    slots: Arc<Semaphore>,
    patience: Duration,
}

impl<R> Clone for Lookups<R> {
    fn clone(&self) -> Self {
        Lookups {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
            slots: self.slots.clone(),
            patience: self.patience,
        }
    }
}

impl<R: ById> Lookups<R> {
    /// Lookups on `pool`, whose statements take `slots` (shared with other kinds of rows). A
    /// lookup that has to queue is answered within `patience` or fails (503), as one waiting
    /// for a connection and then for its statement would.
    pub fn new(pool: PgPool, slots: Arc<Semaphore>, patience: Duration) -> Lookups<R> {
        Lookups {
            pool,
            queue: Arc::new(Mutex::new(Queue {
                jobs: VecDeque::new(),
                next_seq: 0,
            })),
            slots,
            patience,
        }
    }

    /// The live row `id`, if `scope` may see it.
    pub async fn get(&self, scope: Scope, id: String) -> Result<Option<R>, ApiError> {
        // A slot is free only while nobody waits for one: then this lookup is alone.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return self.alone(slot, scope, id).await;
        }
        let (reply, answer) = oneshot::channel();
        let seq = {
            let mut queue = self
                .queue
                .lock()
                .expect("the queue's lock is never poisoned");
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.jobs.push_back(Job {
                seq,
                scope,
                id,
                reply,
            });
            seq
        };
        // However this request ends (answered, given up, or dropped when its client hangs up),
        // its lookup does not stay queued.
        let _leave = Leave { lookups: self, seq };
        let answered = tokio::time::timeout(self.patience, self.wait_in_queue(seq, answer)).await;
        answered.unwrap_or(Err(ApiError::Database(Arc::new(sqlx::Error::PoolTimedOut))))
    }

    /// Waits for the answer to the queued lookup `seq`, or for a slot to take it (and those
    /// queued with it) into a statement.
    async fn wait_in_queue(
        &self,
        seq: u64,
        mut answer: oneshot::Receiver<Reply<R>>,
    ) -> Result<Option<R>, ApiError> {
        loop {
            tokio::select! {
                biased;
                answer = &mut answer => return Self::answered(answer),
                slot = self.slots.clone().acquire_owned() => {
                    let slot = slot.expect("the slots are never closed");
                    let mut jobs = self.take();
                    if jobs.len() == 1 && jobs[0].seq == seq {
                        let job = jobs.pop().expect("one");
                        return self.alone(slot, job.scope, job.id).await;
                    }
                    // Taken from the front: this request's lookup is still queued only if
                    // every lookup taken came before it.
                    let still_queued = jobs.last().is_some_and(|job| job.seq < seq);
                    if !jobs.is_empty() {
                        let pool = self.pool.clone();
                        tokio::spawn(async move {
                            answer_all(pool, jobs).await;
                            drop(slot);
                        });
                    }
                    if !still_queued {
                        return Self::answered(answer.await);
                    }
                }
            }
        }
    }

    /// A lookup that shares its statement with no other: nobody else waits for it, so it
    /// runs here rather than in a task (no hand-over, no wake-up of another thread).
    async fn alone(
        &self,
        slot: OwnedSemaphorePermit,
        scope: Scope,
        id: String,
    ) -> Result<Option<R>, ApiError> {
        let rows = R::fetch(self.pool.clone(), scope, vec![id.clone()]).await?;
        drop(slot);
        Ok(rows.into_iter().find(|row| row.id() == id))
    }

    fn answered(
        answer: Result<Reply<R>, oneshot::error::RecvError>,
    ) -> Result<Option<R>, ApiError> {
        match answer {
            Ok(reply) => reply.map_err(ApiError::Database),
            // The task that took it ended without answering (it panicked).
            Err(_) => Err(ApiError::Database(Arc::new(sqlx::Error::WorkerCrashed))),
        }
    }

    /// Up to [`MAX_IDS`] lookups from the front of the queue.
    fn take(&self) -> Vec<Job<R>> {
        let mut queue = self
            .queue
            .lock()
            .expect("the queue's lock is never poisoned");
        let n = queue.jobs.len().min(MAX_IDS);
        queue.jobs.drain(..n).collect()
    }
}

/// Takes a request's lookup out of the queue when the request ends, if no statement took it.
struct Leave<'a, R> {
    lookups: &'a Lookups<R>,
    seq: u64,
}

impl<R> Drop for Leave<'_, R> {
    fn drop(&mut self) {
        // Never poisoned (nothing panics while holding it); a drop must not panic anyway.
        let mut queue = self
            .lookups
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The queue is in `seq` order.
        if let Ok(at) = queue.jobs.binary_search_by_key(&self.seq, |job| job.seq) {
            queue.jobs.remove(at);
        }
    }
}

/// Looks `jobs` up, one statement per scope among them, and answers each.
async fn answer_all<R: ById>(pool: PgPool, mut jobs: Vec<Job<R>>) {
    while let Some(first) = jobs.first() {
        let scope = first.scope.clone();
        let (mut same, rest): (Vec<_>, Vec<_>) =
            jobs.into_iter().partition(|job| job.scope == scope);
        jobs = rest;
        same.retain(|job| !job.reply.is_closed());
        if same.is_empty() {
            continue;
        }
        let ids = same.iter().map(|job| job.id.clone()).collect();
        match R::fetch(pool.clone(), scope, ids).await {
            Ok(rows) => {
                let rows: HashMap<&str, &R> = rows.iter().map(|row| (row.id(), row)).collect();
                for job in same {
                    let row = rows.get(job.id.as_str()).map(|row| (*row).clone());
                    // Nobody to answer if the request has gone.
                    let _ = job.reply.send(Ok(row));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for job in same {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
impl<R> Lookups<R> {
    fn queued(&self) -> usize {
        self.queue.lock().unwrap().jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of a real statement that tells which statement found it: the ids it was given,
    /// the scope it ran for, and a value drawn once per statement. Ids starting with `missing`
    /// find nothing; the id `fail` fails the statement.
    #[derive(Debug, Clone, sqlx::FromRow)]
    struct Found {
        id: String,
        scope: String,
        ids: i32,
        statement: String,
    }

    impl ById for Found {
        fn id(&self) -> &str {
            &self.id
        }

        async fn fetch(pool: PgPool, scope: Scope, ids: Vec<String>) -> sqlx::Result<Vec<Self>> {
            sqlx::query_as(
                "SELECT id, $2 AS scope, cardinality($1)::int4 AS ids, \
                 (SELECT gen_random_uuid()::text) AS statement \
                 FROM unnest($1::text[]) AS id \
                 WHERE id NOT LIKE 'missing%' \
                 AND CASE WHEN id = 'fail' THEN 1 / (length(id) - 4) ELSE 1 END = 1",
            )
            .bind(ids)
            .bind(format!("{scope:?}"))
            .fetch_all(&pool)
            .await
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    fn limited() -> Scope {
        Scope::Organizations(vec!["org_a".to_owned()].into())
    }

    /// Starts `lookups.get` for each (scope, id), and waits until all are queued.
    async fn queue_all(
        lookups: &Lookups<Found>,
        wanted: &[(Scope, String)],
    ) -> Vec<tokio::task::JoinHandle<Result<Option<Found>, ApiError>>> {
        let tasks = wanted
            .iter()
            .map(|(scope, id)| {
                let lookups = lookups.clone();
                let (scope, id) = (scope.clone(), id.clone());
                tokio::spawn(async move { lookups.get(scope, id).await })
            })
            .collect();
        while lookups.queued() < wanted.len() {
            tokio::task::yield_now().await;
        }
        tasks
    }

    #[sqlx::test(migrations = false)]
    async fn a_lookup_alone_goes_at_once_in_a_statement_of_its_own(pool: PgPool) {
        let lookups = Lookups::<Found>::new(pool, Arc::new(Semaphore::new(1)), PATIENCE);
        let found = lookups.get(Scope::All, "user_1".into()).await.unwrap();
        let found = found.expect("found");
        assert_eq!((found.id.as_str(), found.ids), ("user_1", 1));
        let missing = lookups.get(Scope::All, "missing_1".into()).await.unwrap();
        assert!(missing.is_none());
    }

    #[sqlx::test(migrations = false)]
    async fn lookups_that_wait_together_share_statements_of_their_scope(pool: PgPool) {
        let slots = Arc::new(Semaphore::new(1));
        let lookups = Lookups::<Found>::new(pool, slots.clone(), PATIENCE);
        // The one slot is busy: 250 lookups gather behind it, in two scopes, some of them
        // the same id, some finding nothing.
        let busy = slots.clone().acquire_owned().await.unwrap();
        let wanted: Vec<(Scope, String)> = (0..250)
            .map(|n| {
                let scope = if n % 2 == 0 { Scope::All } else { limited() };
                let id = match n % 10 {
                    9 => format!("missing_{n}"),
                    8 => "user_same".to_owned(),
                    _ => format!("user_{n}"),
                };
                (scope, id)
            })
            .collect();
        let mut tasks = queue_all(&lookups, &wanted).await;
        // Two requests go away before their turn.
        for gone in [tasks.remove(3), tasks.remove(0)] {
            gone.abort();
            assert!(gone.await.unwrap_err().is_cancelled());
        }
        // They took their lookups with them.
        let stayed: Vec<i32> = (0..250).filter(|n| ![0, 3].contains(n)).collect();
        assert_eq!(lookups.queued(), stayed.len());
        let wanted: Vec<_> = stayed.iter().map(|n| wanted[*n as usize].clone()).collect();
        drop(busy);

        let mut statements = HashMap::new();
        for ((scope, id), task) in wanted.iter().zip(tasks) {
            let found = task.await.unwrap().unwrap();
            if id.starts_with("missing") {
                assert!(found.is_none(), "{id}");
                continue;
            }
            let found = found.unwrap_or_else(|| panic!("{id} not found"));
            assert_eq!(&found.id, id);
            assert_eq!(found.scope, format!("{scope:?}"));
            statements.insert(found.statement, (found.scope, found.ids));
        }
        // Taken MAX_IDS at a time from the queue's front, each take split by scope.
        let mut sizes: Vec<i32> = statements.values().map(|(_, ids)| *ids).collect();
        sizes.sort();
        let mut expected = Vec::new();
        for take in stayed.chunks(MAX_IDS) {
            for scope in [0, 1] {
                expected.push(take.iter().filter(|n| *n % 2 == scope).count() as i32);
            }
        }
        expected.sort();
        assert_eq!(sizes, expected);
        assert_eq!(sizes.len(), 8);
    }

    #[sqlx::test(migrations = false)]
    async fn a_failed_statement_fails_only_the_lookups_it_held(pool: PgPool) {
        let slots = Arc::new(Semaphore::new(1));
        let lookups = Lookups::<Found>::new(pool, slots.clone(), PATIENCE);
        let busy = slots.clone().acquire_owned().await.unwrap();
        let wanted = [
            (Scope::All, "user_1".to_owned()),
            (limited(), "fail".to_owned()),
            (Scope::All, "user_2".to_owned()),
            (limited(), "user_3".to_owned()),
        ];
        let tasks = queue_all(&lookups, &wanted).await;
        drop(busy);
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap().map(|found| found.map(|found| found.id)));
        }
        assert_eq!(answers[0].as_ref().unwrap().as_deref(), Some("user_1"));
        assert!(matches!(answers[1], Err(ApiError::Database(_))));
        assert_eq!(answers[2].as_ref().unwrap().as_deref(), Some("user_2"));
        assert!(matches!(answers[3], Err(ApiError::Database(_))));
        // The slot is free again.
        let found = lookups.get(limited(), "user_4".into()).await.unwrap();
        assert_eq!(found.unwrap().ids, 1);
    }
    #[sqlx::test(migrations = false)]
    async fn a_lookup_that_waits_longer_than_its_patience_fails_and_leaves_the_queue(pool: PgPool) {
        let slots = Arc::new(Semaphore::new(1));
        let patience = Duration::from_millis(200);
        let lookups = Lookups::<Found>::new(pool, slots.clone(), patience);
        let busy = slots.clone().acquire_owned().await.unwrap();
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(10 * patience, lookups.get(Scope::All, "user_1".into()))
            .await
            .expect("given up within its patience");
        assert!(matches!(
            answer,
            Err(ApiError::Database(ref error)) if matches!(**error, sqlx::Error::PoolTimedOut)
        ));
        assert!(started.elapsed() >= patience);
        // It left the queue: the next statement holds only the next lookup.
        assert_eq!(lookups.queued(), 0);
        let waiting = lookups.clone();
        let task = tokio::spawn(async move { waiting.get(Scope::All, "user_2".into()).await });
        while lookups.queued() < 1 {
            tokio::task::yield_now().await;
        }
        drop(busy);
        let found = task.await.unwrap().unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.ids), ("user_2", 1));
        assert_eq!(lookups.queued(), 0);
    }
}
