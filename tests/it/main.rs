//! Integration tests: one binary, a fresh migrated database per test (`#[sqlx::test]`), the
//! service on a real socket where HTTP matters.

mod api;
mod convergence;
mod directory;
mod end_to_end;
mod helpers;
mod hostile;
mod operations;
mod receiver;
mod secrecy;
mod signature;
mod worker;
