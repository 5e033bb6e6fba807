//! dsyncd receives WorkOS Directory Sync webhooks and keeps an exact copy of every directory in
//! Postgres.
//!
//! - [`receiver`]: the HTTP edge; verifies ([`signature`]), reads the [`envelope`] and stores
//!   through [`ingest`] (group commit) into the [`inbox`];
//! - [`worker`]: drains the inbox into [`handler`]s, the built-in [`directory`] one keeping
//!   the synced tables;
//! - [`reconcile`]: finds and repairs what webhooks missed, from WorkOS's API ([`workos_api`]);
//! - [`api`]: the read API, WorkOS's Directory Sync API served from the synced tables;
//! - [`app`]: builds all of it from a [`config::Config`]; [`telemetry`]: logging.
//!
//! `docs/ARCHITECTURE.md` tells how the parts fit together.

pub mod api;
pub mod app;
pub mod config;
mod db;
pub mod directory;
pub mod envelope;
pub mod handler;
pub mod inbox;
pub mod ingest;
pub mod metrics;
pub mod receiver;
pub mod reconcile;
pub mod sender;
pub mod signature;
pub mod telemetry;
pub mod worker;
pub mod workos_api;

pub use app::{Role, Service};
pub use directory::DirectoryHandler;
pub use handler::{Event, EventHandler, HandlerError};
