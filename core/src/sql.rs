//! A light lexical look at SQL text: split statements, and hints.
//!
//! Nothing here decides a security or cache question: what a statement is, is DuckDB's answer
//! (the executor asks its parser before anything runs; see `Gate` and `Verdict`). The hints
//! may only make the server more careful, never less:
//! - [`hint_may_write`] lets the write barrier of an ordered connection run a query alone at
//!   once; a query it calls a read is still classified by DuckDB before later ones start.
//! - [`plan_is_reusable`] may only refuse plan reuse to a statement DuckDB calls a read.
//! - [`classify`]'s `returns_rows` picks how a result is read (rows, or `ok`).

/// Where the quoted literal or identifier, comment or dollar-quoted string starting at `i`
/// ends; `None` when none starts there.
fn skip_non_code(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes[i] {
        b'\'' | b'"' => Some(skip_quoted(bytes, i, bytes[i])),
        b'-' if bytes.get(i + 1) == Some(&b'-') => Some(
            bytes[i..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |p| i + p),
        ),
        b'/' if bytes.get(i + 1) == Some(&b'*') => {
            Some(find(bytes, i + 2, b"*/").map_or(bytes.len(), |p| p + 2))
        }
        b'$' => Some(skip_dollar_quoted(bytes, i)),
        _ => None,
    }
}

/// Splits on top-level `;`, skipping quotes, comments and dollar-quoted strings.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(end) = skip_non_code(bytes, i) {
            i = end;
        } else if bytes[i] == b';' {
            statements.push(&sql[start..i]);
            start = i + 1;
            i += 1;
        } else {
            i += 1;
        }
    }
    statements.push(&sql[start..]);
    statements
        .into_iter()
        .filter(|s| !strip_comments_and_space(s).is_empty())
        .collect()
}

/// Whether `keyword` occurs as a word of `sql` outside string literals, quoted identifiers,
/// comments and dollar-quoted strings (case-insensitive). A hint: it may only make a read a
/// write (see the module docs).
pub fn has_keyword(sql: &str, keyword: &str) -> bool {
    let bytes = sql.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if let Some(end) = skip_non_code(bytes, i) {
            i = end.max(i + 1);
        } else if is_word(bytes[i]) {
            let end = bytes[i..]
                .iter()
                .position(|b| !is_word(*b))
                .map_or(bytes.len(), |p| i + p);
            if sql[i..end].eq_ignore_ascii_case(keyword) {
                return true;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    false
}

fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_dollar_quoted(bytes: &[u8], start: usize) -> usize {
    let tag_end = bytes[start + 1..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map(|p| start + 1 + p);
    match tag_end {
        Some(end) if bytes[end] == b'$' => {
            let tag = &bytes[start..=end];
            find(bytes, end + 1, tag).map_or(bytes.len(), |p| p + tag.len())
        }
        _ => start + 1,
    }
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn strip_comments_and_space(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s.trim_end();
        }
    }
}

/// The leading keyword of a statement, uppercased (parentheses skipped).
fn leading_keyword(statement: &str) -> String {
    strip_comments_and_space(statement)
        .trim_start_matches(|c: char| c == '(' || c.is_whitespace())
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

const QUERY_KEYWORDS: [&str; 12] = [
    "SELECT",
    "WITH",
    "VALUES",
    "FROM",
    "TABLE",
    "SHOW",
    "DESCRIBE",
    "DESC",
    "SUMMARIZE",
    "EXPLAIN",
    "PIVOT",
    "UNPIVOT",
];

/// Statements that return rows although they may do more (procedures, pragmas).
const ROW_RETURNING_COMMANDS: [&str; 2] = ["CALL", "PRAGMA"];

fn has_returning(statement: &str) -> bool {
    statement
        .to_ascii_uppercase()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|word| word == "RETURNING")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// The last statement yields a result set.
    pub returns_rows: bool,
    /// Every statement is a plain read (so the cache need not be invalidated).
    pub read_only: bool,
}

/// A hint, never a verdict: whether a message of `kind` with `sql` looks like it may write
/// (an `exec`, or SQL whose statements do not all start with a query keyword). It may call a
/// write a read (`with a as (select 1) insert …`); callers must only use it to be *more*
/// careful (see the module docs).
pub fn hint_may_write(kind: crate::QueryKind, sql: &str) -> bool {
    kind == crate::QueryKind::Exec || !classify(sql).read_only
}

pub fn classify(sql: &str) -> Classification {
    let statements = split_statements(sql);
    let is_read = |s: &&str| QUERY_KEYWORDS.contains(&leading_keyword(s).as_str());
    let returns_rows = statements.last().is_some_and(|last| {
        let keyword = leading_keyword(last);
        QUERY_KEYWORDS.contains(&keyword.as_str())
            || ROW_RETURNING_COMMANDS.contains(&keyword.as_str())
            || has_returning(last)
    });
    Classification {
        returns_rows,
        read_only: !statements.is_empty() && statements.iter().all(is_read),
    }
}

/// Words of SQL that reads outside the database (files, globs, URLs, other databases, SQL
/// built at run time). A plan of such SQL holds what the source looked like when it was
/// planned: the files a glob matched, a file's statistics.
const EXTERNAL_SOURCE_MARKERS: [&str; 10] = [
    "read_", "scan", "glob", "parquet", "csv", "json", "attach", "query", "http", "file",
];

/// Whether a plan of `sql` may be kept and run again while nothing writes: one plain read
/// that touches only the database's own tables. Conservative: a miss only costs planning.
pub fn plan_is_reusable(sql: &str) -> bool {
    let statements = split_statements(sql);
    let [statement] = statements.as_slice() else {
        return false;
    };
    if !QUERY_KEYWORDS.contains(&leading_keyword(statement).as_str()) {
        return false;
    }
    let lower = statement.to_ascii_lowercase();
    // `FROM 'data.parquet'`, `FROM "dir/file.tsv"`: replacement scans of files.
    !EXTERNAL_SOURCE_MARKERS.iter().any(|m| lower.contains(m)) && !quotes_a_path(statement)
}

/// A quoted literal or identifier holding `.` or `/`, as a file name does.
fn quotes_a_path(statement: &str) -> bool {
    let bytes = statement.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' || bytes[i] == b'"' {
            let end = skip_quoted(bytes, i, bytes[i]);
            if bytes[i..end].iter().any(|b| *b == b'.' || *b == b'/') {
                return true;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "select 'a;b'; -- c;d\n select \"x;\" /* ; */ ; select $$;$$; ;";
        assert_eq!(split_statements(sql).len(), 3);
        assert_eq!(split_statements("  ;; -- only a comment").len(), 0);
    }

    #[test]
    fn reads_and_writes() {
        let read = classify("select 1");
        assert!(read.returns_rows && read.read_only);
        let cte = classify("  (WITH t AS (select 1) SELECT * FROM t)");
        assert!(cte.returns_rows && cte.read_only);
        let ddl = classify("create table t(x int)");
        assert!(!ddl.returns_rows && !ddl.read_only);
        let insert_then_select = classify("insert into t values (1); select * from t");
        assert!(insert_then_select.returns_rows && !insert_then_select.read_only);
        let returning = classify("insert into t values (1) returning x");
        assert!(returning.returns_rows && !returning.read_only);
        let call = classify("call pragma_version()");
        assert!(call.returns_rows && !call.read_only);
        assert!(!classify("  ").returns_rows);
    }

    #[test]
    fn keywords_are_found_outside_quotes_and_comments_only() {
        assert!(has_keyword("explain analyze select 1", "ANALYZE"));
        assert!(has_keyword("EXPLAIN (ANALYZE) select 1", "analyze"));
        assert!(!has_keyword("explain select 'analyze'", "ANALYZE"));
        assert!(!has_keyword("explain select \"analyze\" from t", "ANALYZE"));
        assert!(!has_keyword("explain select 1 -- analyze", "ANALYZE"));
        assert!(!has_keyword("explain /* analyze */ select 1", "ANALYZE"));
        assert!(!has_keyword("explain select $$analyze$$", "ANALYZE"));
        assert!(!has_keyword("explain select analyzed from t", "ANALYZE"));
        assert!(!has_keyword("", "ANALYZE"));
    }

    #[test]
    fn only_single_reads_of_the_database_own_tables_reuse_plans() {
        assert!(plan_is_reusable("select 1"));
        assert!(plan_is_reusable(
            "SELECT \"origin\", count(*) FROM \"flights\" WHERE \"delay\" > 10 GROUP BY 1;"
        ));
        assert!(plan_is_reusable("select * from t where d > '2024-01-01'"));
        // Writes and session changes, several statements.
        assert!(!plan_is_reusable("insert into t values (1)"));
        assert!(!plan_is_reusable("set threads = 1"));
        assert!(!plan_is_reusable("select 1; select 2"));
        // Files, globs and URLs can change outside the server.
        assert!(!plan_is_reusable(
            "select * from read_parquet('x/*.parquet')"
        ));
        assert!(!plan_is_reusable("select * from 'flights.parquet'"));
        assert!(!plan_is_reusable("from \"data/athletes.tsv\""));
        assert!(!plan_is_reusable("select * from glob('*')"));
        assert!(!plan_is_reusable("select * from query('select 1')"));
    }
}
