//! Integration tests: one binary, a fresh migrated database per test (`#[sqlx::test]`), the
//! service on a real socket where HTTP matters.

mod api;
mod convergence;
mod deletions;
mod directory;
mod end_to_end;
mod fake_workos;
mod helpers;
mod hostile;
mod operations;
mod receiver;
mod reconcile;
mod secrecy;
mod signature;
mod worker;
