//! What a DuckDB error says happened, decided once, here, where its text is seen. Whether a
//! query was interrupted is not read from text at all: the executor knows which queries it
//! interrupted (`Interrupts::finish`). The two kinds below have no such fact: duckdb-rs
//! reports an execution error as its message only (it destroys the result, and with it
//! `duckdb_result_error_type`, before returning), so they are told apart by DuckDB's wording,
//! here and nowhere else. The rest of the server matches on [`FailureKind`] and the outcomes
//! made from it (`QueryOutcome::NotARead`), never on text.

/// The kind of a DuckDB error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A transaction conflict: another attempt may succeed.
    Conflict,
    /// A write refused inside a read-only transaction: nothing was written.
    WriteInReadOnlyTransaction,
    /// Anything else: the message goes to the client as DuckDB wrote it.
    Other,
}

impl FailureKind {
    pub fn of(message: &str) -> FailureKind {
        if [
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
