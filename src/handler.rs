//! The extension point: what the worker hands to event handlers, and the trait they implement.
//!
//! The worker claims a batch of stored deliveries, opens one transaction, gives every handler
//! the events it [`handles`](EventHandler::handles), marks the events finished and commits.
//! What a handler writes through the connection it is given therefore commits exactly when the
//! events are marked done: once, or (after a rollback) not at all. Effects outside Postgres
//! (calling another service) happen at least once, so make them idempotent.
//!
//! If a batch fails, the worker rolls it back and retries every event on its own, so that one
//! bad event never holds back the others.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sqlx::PgConnection;

use crate::envelope::{describe_json_error, Envelope, EnvelopeError};

/// A stored delivery, as handlers see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The WorkOS event id, stable across retries.
    pub id: String,
    /// The event type, e.g. `dsync.user.created`.
    pub event: String,
    /// The event's `data` object, unparsed; see [`Event::data_as`].
    pub data: Box<RawValue>,
    /// When WorkOS created the event, if the delivery says.
    pub created_at: Option<DateTime<Utc>>,
}

impl Event {
    /// Reads a stored body back into an event.
    pub fn from_payload(payload: &str) -> Result<Self, EnvelopeError> {
        let envelope = Envelope::parse_stored(payload)?;
        let data = envelope
            .data
            .map(|data| data.to_owned())
            .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        Ok(Event {
            created_at: envelope.created_at(),
            id: envelope.id.into_owned(),
            event: envelope.event.into_owned(),
            data,
        })
    }

    /// Deserializes `data` into a type of the handler's choice.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(self.data.get()).map_err(|error| {
            HandlerError::Rejected(format!(
                "`data` of {} does not fit: {}",
                self.event,
                describe_json_error(&error)
            ))
        })
    }
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (its data does not fit): it goes to `dead` at once,
    /// without retries, for an operator to look at.
    #[error("{0}")]
    Rejected(String),
    /// A database error; retried with backoff.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Any other failure; retried with backoff.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Something that reacts to events. Register handlers with the worker next to the built-in
/// directory handler; `examples/custom_handler.rs` shows one.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether this handler wants events of this type. Events that no handler wants end as
    /// `ignored`.
    fn handles(&self, event_type: &str) -> bool;

    /// Applies one event inside the worker's transaction.
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError>;

    /// Applies several events, in the order given, inside the worker's transaction. Override it
    /// when a set of events can be applied faster together; the result must be the same as
    /// applying them one by one.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.handle(conn, event).await?;
        }
        Ok(())
    }

    /// Does one bounded step of work that applying events left for later, inside a
    /// transaction of its own that the worker begins and commits, and returns whether it found
    /// any (then there may be more). The worker's first claim loop calls it before each claim
    /// while it finds work, and at least once a polling interval otherwise. The built-in
    /// handler deletes a large directory's rows this way, a few thousand at a time; the
    /// default has nothing to do.
    async fn step(&self, conn: &mut PgConnection) -> Result<bool, HandlerError> {
        let _ = conn;
        Ok(false)
    }
}
