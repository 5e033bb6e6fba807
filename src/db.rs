//! What the tables' writers share about Postgres's answers.

/// Whether `error` is a statement finding a key stored already (SQLSTATE 23505). The
/// receiver's insert of new deliveries and the upsert of a first sync's users both try a plain
/// insert first and fall back to one with `ON CONFLICT` on this.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
}
