//! What a database error's SQLSTATE says about retrying it, shared by every job kind.

use std::borrow::Cow;

/// `unique_violation`.
pub const UNIQUE_VIOLATION: &str = "23505";

/// `query_canceled`: the statement outlasted its `statement_timeout`, or was cancelled.
pub const QUERY_CANCELED: &str = "57014";

/// The SQLSTATE of an error the server raised, if it is one.
pub fn code(error: &sqlx::Error) -> Option<Cow<'_, str>> {
    match error {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    }
}

/// True when the server cancelled the statement (its `statement_timeout`, or an operator):
/// the server answered, so it is no sign of an outage.
pub fn is_query_canceled(error: &sqlx::Error) -> bool {
    code(error).as_deref() == Some(QUERY_CANCELED)
}

/// True for errors caused by the rows written (SQLSTATE classes 22 "data exception" and 23
/// "integrity constraint violation"): writing the same rows again fails the same way.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    code(error).is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// True for errors the server raised about the statements themselves (not about the
/// connection, the server's resources or an operator): some row of a batch may be the
/// cause, so the batch is worth writing one row at a time.
pub fn may_be_caused_by_a_row(error: &sqlx::Error) -> bool {
    code(error).is_some_and(|code| {
        !["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
    })
}

/// True for errors a fresh attempt of the same transaction may not meet (SQLSTATE class 40:
/// serialization failure, deadlock detected).
pub fn is_transaction_conflict(error: &sqlx::Error) -> bool {
    code(error).is_some_and(|code| code.starts_with("40"))
}
