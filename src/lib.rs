//! dsyncd receives WorkOS Directory Sync webhooks and keeps an exact copy of every directory in
//! Postgres. See `docs/ARCHITECTURE.md` for how the modules fit together.

pub mod directory;
pub mod envelope;
pub mod handler;

pub use directory::DirectoryHandler;
pub use handler::{Event, EventHandler, HandlerError};
