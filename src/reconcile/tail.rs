//! The Events API tail: pages through `GET /events` after the stored cursor and stores each
//! event in the inbox exactly as a webhook delivery would be (same id, the event's JSON as
//! WorkOS returned it as the payload, `source = 'events_api'`). The page and the cursor's move
//! commit in one transaction, so a tail killed at any point neither skips nor re-stores a page.
//! The worker then applies the events like any delivery.

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use sqlx::PgPool;

use super::store::{self, Cursor};
use super::ReconcileError;
use crate::directory::DirectoryHandler;
use crate::envelope::Envelope;
use crate::inbox::{self, NewDelivery};
use crate::workos_api::{ApiError, Client};

/// Events per page (WorkOS's maximum).
pub const PAGE_LIMIT: usize = 100;

/// Every `dsync.*` event type, as the `events` parameter wants them: the ones the directory
/// handler applies, and the token events (stored and `ignored`, as a webhook would be).
pub fn event_types() -> String {
    DirectoryHandler::event_types()
        .chain(["dsync.token.created", "dsync.token.revoked"])
        .collect::<Vec<_>>()
        .join(",")
}

/// What one step of the tail did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A page was stored and the cursor moved past it (or the page was empty).
    Stored {
        /// Events on the page.
        events: usize,
        /// Of them, those no webhook had delivered (new inbox rows).
        recovered: usize,
        /// Whether the page was full: more may follow at once.
        full: bool,
    },
    /// The tail cannot go on from where it is: a snapshot reconciliation must run first, and
    /// the tail restart from when it began.
    NeedsSnapshot(Restart),
}

/// Why the tail needs a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// The tail never ran (a new install, or an API key just added).
    NoCursor,
    /// The cursor's event (or, before the first one, the tail's `range_start`) is older than
    /// `reconcile.cursor_max_age_days`.
    TooOld {
        /// Its age in days.
        age_days: i64,
    },
    /// WorkOS refused the cursor (an expired or unknown event id).
    Refused {
        /// The status it answered.
        status: u16,
    },
}

/// The tail of one process.
#[derive(Debug, Clone)]
pub struct Tail {
    pool: PgPool,
    client: Client,
    max_age: ChronoDuration,
    event_types: String,
}

impl Tail {
    /// A tail storing into `pool`'s inbox; cursors older than `max_age_days` are not used.
    pub fn new(pool: PgPool, client: Client, max_age_days: u32) -> Self {
        Tail {
            pool,
            client,
            max_age: ChronoDuration::days(max_age_days.into()),
            event_types: event_types(),
        }
    }

    /// Fetches and stores one page after the cursor.
    pub async fn step(&self) -> Result<Step, ReconcileError> {
        let mut conn = self.pool.acquire().await?;
        let Some(cursor) = store::cursor(&mut conn).await? else {
            return Ok(Step::NeedsSnapshot(Restart::NoCursor));
        };
        drop(conn);
        // Before its first event the tail's position is its `range_start`: just as old.
        let position = cursor.event_created_at.unwrap_or(cursor.range_start);
        let age = Utc::now() - position;
        if age > self.max_age {
            return Ok(Step::NeedsSnapshot(Restart::TooOld {
                age_days: age.num_days(),
            }));
        }
        let page = match self.fetch(&cursor).await {
            Ok(page) => page,
            Err(ApiError::Refused { status, .. })
                if cursor.event_id.is_some() && matches!(status, 400 | 404 | 410 | 422) =>
            {
                return Ok(Step::NeedsSnapshot(Restart::Refused { status }));
            }
            Err(error) => return Err(error.into()),
        };
        let mut deliveries = Vec::with_capacity(page.data.len());
        // The cursor is the last event of the page as served: a page need not be sorted.
        let mut last: Option<(String, Option<DateTime<Utc>>)> = None;
        for item in &page.data {
            match Envelope::parse_stored(item.get()) {
                Ok(envelope) => {
                    last = Some((envelope.id.to_string(), envelope.created_at()));
                    deliveries.push(NewDelivery {
                        id: envelope.id.into_owned(),
                        event: envelope.event.into_owned(),
                        payload: item.get().to_owned(),
                        ..NewDelivery::default()
                    });
                }
                Err(error) => {
                    tracing::warn!(error = %error, "an item of GET /events is not an event; skipped")
                }
            }
        }
        let events = page.data.len();
        let Some((last_id, last_created_at)) = last else {
            return Ok(Step::Stored {
                events,
                recovered: 0,
                full: false,
            });
        };
        let mut tx = self.pool.begin().await?;
        let refs: Vec<&NewDelivery> = deliveries.iter().collect();
        let recovered = inbox::insert_from_events_api(&mut tx, &refs).await?;
        store::move_cursor(&mut tx, &last_id, last_created_at).await?;
        tx.commit().await?;
        if !recovered.is_empty() {
            tracing::warn!(
                events.recovered = recovered.len(),
                "the Events API had events that no webhook delivered"
            );
        }
        Ok(Step::Stored {
            events,
            recovered: recovered.len(),
            full: events >= PAGE_LIMIT,
        })
    }

    async fn fetch(&self, cursor: &Cursor) -> Result<crate::workos_api::Page, ApiError> {
        let limit = PAGE_LIMIT.to_string();
        let range_start = cursor
            .range_start
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut query = vec![
            ("events", self.event_types.as_str()),
            ("order", "asc"),
            ("limit", limit.as_str()),
        ];
        match &cursor.event_id {
            Some(after) => query.push(("after", after.as_str())),
            None => query.push(("range_start", range_start.as_str())),
        }
        self.client.list("/events", &query).await
    }
}
