//! What a DuckDB error says happened, decided once, here, where its text is seen: duckdb-rs
//! hands the executor DuckDB's error as text, and the kinds below are told apart by it. The rest
//! of the server matches on [`FailureKind`] and the outcomes made from it
//! (`QueryOutcome::Cancelled`, `QueryOutcome::NotARead`), never on text.

/// The kind of a DuckDB error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Stopped by `duckdb_interrupt` (a cancel, a timeout, a closed connection).
    Interrupted,
    /// A transaction conflict: another attempt may succeed.
    Conflict,
    /// A write refused inside a read-only transaction: nothing was written.
    WriteInReadOnlyTransaction,
    /// Anything else: the message goes to the client as DuckDB wrote it.
    Other,
}

impl FailureKind {
    pub fn of(message: &str) -> FailureKind {
        if message.contains("INTERRUPT") {
            FailureKind::Interrupted
        } else if [
            "Transaction conflict",
            "Conflict on",
            "write-write conflict",
        ]
        .iter()
        .any(|needle| message.contains(needle))
        {
            FailureKind::Conflict
        } else if message.contains("transaction is launched in read-only mode") {
            FailureKind::WriteInReadOnlyTransaction
        } else {
            FailureKind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duckdb_messages_are_told_apart() {
        for (message, kind) in [
            (
                "TransactionContext Error: Transaction conflict: cannot update",
                FailureKind::Conflict,
            ),
            ("Conflict on tuple deletion!", FailureKind::Conflict),
            ("write-write conflict on key", FailureKind::Conflict),
            ("INTERRUPT Error: Interrupted!", FailureKind::Interrupted),
            (
                "TransactionContext Error: Cannot write to database \"x\" - transaction is launched in read-only mode",
                FailureKind::WriteInReadOnlyTransaction,
            ),
            ("Parser Error: syntax error", FailureKind::Other),
        ] {
            assert_eq!(FailureKind::of(message), kind, "{message}");
        }
    }
}
