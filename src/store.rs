//! Persistence of durable queues and retained messages in SQLite (WAL mode).
//!
//! One writer thread owns the database. The router hands it writes through a channel
//! and never waits for the disk; the thread applies whatever has arrived in one
//! transaction (a group commit), so a burst of publishes costs one commit, not one
//! per message. A publisher that needs its message safely stored (`qos=1`) waits for
//! a [`Store::flush`], which completes after every write queued before it is committed.
//!
//! With `fsync = false` a commit survives the broker process being killed (the WAL is
//! written before the commit returns); with `fsync = true` it also survives a power
//! failure, at the price of one disk sync per group commit.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

/// The database file inside `data_dir`.
pub const DB_FILE: &str = "broker.db";
/// Bumped when the tables change; a database from another version is refused.
const SCHEMA_VERSION: i64 = 1;
/// Most writes applied in one transaction.
const MAX_BATCH: usize = 20_000;

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or open data_dir {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("the database {path} is damaged ({detail}); move it away to start with an empty one")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the database {path} is in use by another broker")]
    InUse { path: PathBuf },
    #[error(
        "the database {path} was written by another version of the broker (schema {found}, expected {SCHEMA_VERSION})"
    )]
    Version { path: PathBuf, found: i64 },
    #[error("writing to the database failed: {0}")]
    Write(String),
}

/// One change to persist.
#[derive(Debug)]
pub enum Op {
    /// Creates or replaces a durable queue's definition (JSON).
    SaveQueue { name: String, definition: String },
    /// Deletes a queue and every message in it.
    DeleteQueue { name: String },
    /// Stores a message in a queue at its sequence number.
    Put { queue: String, seq: u64, delivery_count: u32, record: Bytes },
    /// Removes a message from a queue (acknowledged, expired or dead-lettered).
    Remove { queue: String, seq: u64 },
    /// Records how many times a message was delivered, when it goes back to its queue.
    SetDeliveryCount { queue: String, seq: u64, delivery_count: u32 },
    /// Keeps (`Some`) or clears (`None`) the retained message of a topic.
    Retain { topic: String, record: Option<Bytes> },
}

enum Command {
    Write(Op),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// A durable queue as found in the database.
#[derive(Debug)]
pub struct RestoredQueue {
    pub definition: String,
    /// `(seq, delivery_count, record)` in sequence order.
    pub messages: Vec<(u64, u32, Vec<u8>)>,
}

/// What a previous run left in the database.
#[derive(Debug, Default)]
pub struct Restored {
    pub queues: Vec<RestoredQueue>,
    /// `(topic, record)`.
    pub retained: Vec<(String, Vec<u8>)>,
}

pub struct Store {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the database in `dir` and reads back what it holds.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Store, Restored), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::Directory { path: dir.to_owned(), source })?;
        let path = dir.join(DB_FILE);
        let db = open_database(&path, fsync)?;
        let restored = restore(&db, &path)?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("broker-store".into())
            .spawn(move || write_loop(db, rx))
            .map_err(|source| StoreError::Directory { path: dir.to_owned(), source })?;
        tracing::info!(path = %path.display(), queues = restored.queues.len(), retained = restored.retained.len(), "store opened");
        Ok((Store { path, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) }, restored))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write; it is committed with the next group commit.
    pub fn write(&self, op: Op) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Command::Write(op));
        }
    }

    /// Completes once every write queued before it is committed (or has failed).
    pub fn flush(&self) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        match &*self.tx.lock() {
            Some(tx) => {
                let _ = tx.send(Command::Flush(done));
            }
            None => {
                let _ = done.send(Err("the store is closed".into()));
            }
        }
        rx
    }

    /// Commits what is queued and stops the writer thread.
    pub fn close(&self) {
        drop(self.tx.lock().take());
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_database(path: &Path, fsync: bool) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open { path: path.to_owned(), source };
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let db = Connection::open_with_flags(path, flags).map_err(open_error)?;
    let classify = |error: rusqlite::Error| match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.to_owned(), detail: error.to_string() }
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::InUse { path: path.to_owned() }
        }
        _ => StoreError::Open { path: path.to_owned(), source: error },
    };
    // One broker per data_dir: the exclusive lock makes a second one fail at once.
    db.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(classify)?;
    let mode: String =
        db.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(classify)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("journal mode is {mode}, not WAL"),
        });
    }
    db.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" }).map_err(classify)?;
    // Take the write lock now (and keep it: exclusive mode), not at the first publish.
    db.execute_batch("BEGIN EXCLUSIVE; COMMIT;").map_err(classify)?;
    let check: String = db.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(classify)?;
    if check != "ok" {
        return Err(StoreError::Corrupt { path: path.to_owned(), detail: check });
    }
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, definition TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS messages (
             queue TEXT NOT NULL, seq INTEGER NOT NULL, delivery_count INTEGER NOT NULL,
             record BLOB NOT NULL, PRIMARY KEY (queue, seq)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, record BLOB NOT NULL);
         INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1);",
    )
    .map_err(classify)?;
    let found: i64 = db
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| row.get(0))
        .map_err(classify)?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::Version { path: path.to_owned(), found });
    }
    Ok(db)
}

fn restore(db: &Connection, path: &Path) -> Result<Restored, StoreError> {
    let corrupt =
        |error: rusqlite::Error| StoreError::Corrupt { path: path.to_owned(), detail: error.to_string() };
    let mut restored = Restored::default();
    let mut queues = db.prepare("SELECT name, definition FROM queues ORDER BY name").map_err(corrupt)?;
    let mut messages = db
        .prepare("SELECT seq, delivery_count, record FROM messages WHERE queue = ?1 ORDER BY seq")
        .map_err(corrupt)?;
    let rows: Vec<(String, String)> = queues
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(corrupt)?
        .collect::<Result<_, _>>()
        .map_err(corrupt)?;
    for (name, definition) in rows {
        let stored = messages
            .query_map([&name], |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, u32>(1)?, row.get(2)?)))
            .map_err(corrupt)?
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        restored.queues.push(RestoredQueue { definition, messages: stored });
    }
    let mut retained = db.prepare("SELECT topic, record FROM retained ORDER BY topic").map_err(corrupt)?;
    restored.retained = retained
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(corrupt)?
        .collect::<Result<_, _>>()
        .map_err(corrupt)?;
    // Messages of a queue whose definition is gone can never be delivered.
    let orphans = db
        .query_row("SELECT count(*) FROM messages WHERE queue NOT IN (SELECT name FROM queues)", [], |row| {
            row.get::<_, i64>(0)
        })
        .optional()
        .map_err(corrupt)?
        .unwrap_or(0);
    if orphans > 0 {
        tracing::warn!(orphans, "messages of deleted queues found in the store; they are removed");
        db.execute("DELETE FROM messages WHERE queue NOT IN (SELECT name FROM queues)", [])
            .map_err(corrupt)?;
    }
    Ok(restored)
}

fn write_loop(mut db: Connection, rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let result = apply(&mut db, &batch).map_err(|error| {
            tracing::error!(%error, "writing to the store failed; the writes of this batch are lost");
            error.to_string()
        });
        for command in batch.drain(..) {
            if let Command::Flush(done) = command {
                let _ = done.send(result.clone());
            }
        }
    }
    // Everything queued is committed; fold the WAL back into the database.
    if let Err(error) = db.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(%error, "checkpointing the store on close failed");
    }
}

fn apply(db: &mut Connection, batch: &[Command]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    for command in batch {
        let Command::Write(op) = command else { continue };
        match op {
            Op::SaveQueue { name, definition } => {
                tx.prepare_cached("INSERT OR REPLACE INTO queues (name, definition) VALUES (?1, ?2)")?
                    .execute(params![name, definition])?;
            }
            Op::DeleteQueue { name } => {
                tx.prepare_cached("DELETE FROM queues WHERE name = ?1")?.execute([name])?;
                tx.prepare_cached("DELETE FROM messages WHERE queue = ?1")?.execute([name])?;
            }
            Op::Put { queue, seq, delivery_count, record } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO messages (queue, seq, delivery_count, record) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![queue, *seq as i64, delivery_count, &record[..]])?;
            }
            Op::Remove { queue, seq } => {
                tx.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND seq = ?2")?
                    .execute(params![queue, *seq as i64])?;
            }
            Op::SetDeliveryCount { queue, seq, delivery_count } => {
                tx.prepare_cached("UPDATE messages SET delivery_count = ?3 WHERE queue = ?1 AND seq = ?2")?
                    .execute(params![queue, *seq as i64, delivery_count])?;
            }
            Op::Retain { topic, record: Some(record) } => {
                tx.prepare_cached("INSERT OR REPLACE INTO retained (topic, record) VALUES (?1, ?2)")?
                    .execute(params![topic, &record[..]])?;
            }
            Op::Retain { topic, record: None } => {
                tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?.execute([topic])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    async fn flushed(store: &Store) {
        store.flush().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn writes_survive_a_reopen() {
        let dir = temp_dir("reopen");
        {
            let (store, restored) = Store::open(&dir, false).unwrap();
            assert!(restored.queues.is_empty());
            store.write(Op::SaveQueue { name: "q".into(), definition: "{}".into() });
            for seq in 1..=3 {
                let record = Bytes::from(format!("m{seq}"));
                store.write(Op::Put { queue: "q".into(), seq, delivery_count: 0, record });
            }
            store.write(Op::Remove { queue: "q".into(), seq: 2 });
            store.write(Op::SetDeliveryCount { queue: "q".into(), seq: 3, delivery_count: 2 });
            store.write(Op::Retain { topic: "a.b".into(), record: Some(Bytes::from_static(b"r")) });
            store.write(Op::Retain { topic: "a.c".into(), record: Some(Bytes::from_static(b"x")) });
            store.write(Op::Retain { topic: "a.c".into(), record: None });
            flushed(&store).await;
        }
        let (_store, restored) = Store::open(&dir, false).unwrap();
        assert_eq!(restored.queues.len(), 1);
        assert_eq!(restored.queues[0].messages, vec![(1, 0, b"m1".to_vec()), (3, 2, b"m3".to_vec())]);
        assert_eq!(restored.retained, vec![("a.b".to_owned(), b"r".to_vec())]);
        drop(_store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let error = Store::open(&dir, false).err().expect("refused");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("damaged"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_broker_on_the_same_directory_is_refused() {
        let dir = temp_dir("in-use");
        let (first, _) = Store::open(&dir, false).unwrap();
        let error = Store::open(&dir, false).err().expect("refused");
        assert!(matches!(error, StoreError::InUse { .. }), "{error}");
        drop(first);
        Store::open(&dir, false).expect("free again once the first one closed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
