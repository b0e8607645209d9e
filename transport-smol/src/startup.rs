//! Start-up: flag combinations that cannot work, opening the database with its settings,
//! extensions, `--init-sql`, and DuckDB's file sandbox (PROTOCOL §7a, §8).

use std::sync::Arc;

use duckdb::Connection;

use crate::config::ServerConfig;
use crate::executor::database::Database;
use crate::server::StartError;

/// Opens (or creates) the database as PROTOCOL §8 says: its C API handle (which the workers
/// connect and classify statements through) and a first connection.
pub fn open_database(config: &ServerConfig) -> Result<(Arc<Database>, Connection), StartError> {
    let fail = |message: String| StartError::Database {
        path: config.db_path.clone(),
        message,
    };
    let mut settings = vec![("lambda_syntax", config.lambda_syntax.as_str())];
    if config.read_only {
        // Several read-only processes may serve one file.
        settings.push(("access_mode", "READ_ONLY"));
    }
    let database = if config.is_in_memory() {
        Database::open(":memory:", &settings).map_err(fail)?
    } else {
        let path = std::path::Path::new(&config.db_path);
        if path.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
            // An empty file is not a DuckDB database; DuckDB refuses it.
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        Database::open(&config.db_path, &settings).map_err(fail)?
    };
    let conn = database.connect().map_err(fail)?;
    conn.execute_batch(&format!("SET threads = {}", config.threads.max(1)))
        .map_err(|e| fail(e.to_string()))?;
    Ok((database, conn))
}

pub(crate) fn load_extensions(conn: &Connection, extensions: &[String]) {
    for spec in extensions {
        let (name, repository) = match spec.split_once('@') {
            Some((name, repo)) => (name, Some(repo)),
            None => (spec.as_str(), None),
        };
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid(name) || !repository.is_none_or(valid) {
            tracing::warn!(extension = spec, "skipping extension with an invalid name");
            continue;
        }
        let install = match repository {
            Some(repo) => format!("INSTALL {name} FROM {repo}"),
            None => format!("INSTALL {name}"),
        };
        match conn.execute_batch(&format!("{install}; LOAD {name};")) {
            Ok(()) => tracing::info!(extension = spec, "extension loaded"),
            Err(e) => tracing::warn!(extension = spec, "extension not loaded (skipped): {e}"),
        }
    }
}

/// The version of the DuckDB library this binary runs (`v2.0.0`), asked of DuckDB itself.
pub fn duckdb_library_version() -> String {
    Connection::open_in_memory()
        .and_then(|conn| conn.query_row("SELECT version()", [], |row| row.get(0)))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Flag combinations that cannot work, refused before anything starts.
pub(crate) fn check_flags(config: &ServerConfig) -> Result<(), StartError> {
    match (&config.core.auth_token, &config.core.read_token) {
        (None, Some(_)) => {
            return Err(StartError::Flags(
                "--read-token needs --auth-token: without a full token every client may write"
                    .into(),
            ))
        }
        (Some(full), Some(read)) if full == read => {
            return Err(StartError::Flags(
                "--read-token must differ from --auth-token".into(),
            ))
        }
        _ => {}
    }
    if config.read_only && config.is_in_memory() {
        return Err(StartError::Flags(
            "--read-only needs a database file (--db-path)".into(),
        ));
    }
    if config.read_only && config.core.sync_enabled && config.meta_db.is_none() {
        return Err(StartError::Flags(
            "--sync with --read-only needs --meta-db on a writable file: rooms are saved there"
                .into(),
        ));
    }
    Ok(())
}

/// Runs `--init-sql`: each statement in order; the first failure stops the start with the
/// line it begins on.
pub(crate) fn run_init_sql(conn: &Connection, file: &std::path::Path) -> Result<(), StartError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| StartError::InitSql {
        file: name.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    for statement in duckwire_core::sql::split_statements(&text) {
        let offset = statement.as_ptr() as usize - text.as_ptr() as usize;
        let leading = statement.len() - statement.trim_start().len();
        let line = text[..offset + leading].matches('\n').count() + 1;
        conn.execute_batch(statement)
            .map_err(|e| StartError::InitSql {
                file: name.clone(),
                line,
                message: e.to_string(),
            })?;
    }
    tracing::info!(file = name, "init SQL ran");
    Ok(())
}

/// `--allowed-dirs` / `--no-external-access`: DuckDB's own sandbox, locked so no client can
/// undo it. Meta storage is attached before, and the result cache's files are written by
/// the server itself, so both keep working.
pub(crate) fn lock_down_file_access(
    conn: &Connection,
    config: &ServerConfig,
) -> Result<(), StartError> {
    if config.allowed_dirs.is_empty() && !config.no_external_access {
        return Ok(());
    }
    let mut statements = Vec::new();
    if !config.no_external_access {
        let dirs: Vec<String> = config
            .allowed_dirs
            .iter()
            .map(|dir| {
                // DuckDB compares canonical paths; a directory must end with a separator so a
                // sibling with the same prefix is not inside it.
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                let mut text = dir.display().to_string();
                if !text.ends_with('/') {
                    text.push('/');
                }
                format!("'{}'", text.replace('\'', "''"))
            })
            .collect();
        statements.push(format!("SET allowed_directories = [{}]", dirs.join(", ")));
    }
    statements.push("SET enable_external_access = false".into());
    statements.push("SET lock_configuration = true".into());
    for statement in statements {
        conn.execute_batch(&statement)
            .map_err(|e| StartError::Sandbox(format!("{statement}: {e}")))?;
    }
    Ok(())
}
