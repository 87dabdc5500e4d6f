//! Persistence of durable queues and retained messages in SQLite (WAL mode).
//!
//! One writer thread owns the database. The router hands it writes through a channel
//! and never waits for the disk; the thread applies whatever has arrived in one
//! transaction (a group commit), so a burst of publishes costs one commit, not one
//! per message. A publisher that needs its message safely stored (`qos=1`) waits for
//! a [`Store::flush`], which completes after every write queued before it is committed.
//!
//! Durable queues keep only a window of their messages in memory; the rest stays
//! here and is read back in order, by the same thread (so a read always sees every
//! write queued before it), as consumers take them ([`Store::load`]). Writes that are
//! queued but not applied yet are bounded too: past [`MAX_PENDING_BYTES`] the
//! connections that publish wait ([`Store::room`]) instead of memory growing.
//!
//! With `fsync = false` a commit survives the broker process being killed (the WAL is
//! written before the commit returns); with `fsync = true` it also survives a power
//! failure, at the price of one disk sync per group commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Notify, mpsc as async_mpsc, oneshot};

/// The database file inside `data_dir`.
pub const DB_FILE: &str = "broker.db";
/// Bumped when the tables change; a database from another version is refused.
const SCHEMA_VERSION: i64 = 1;
/// Most writes applied in one transaction.
const MAX_BATCH: usize = 20_000;
/// Bytes of records queued for the writer past which publishers wait for it.
pub const MAX_PENDING_BYTES: usize = 32 << 20;

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
    /// Removes the ready messages of a queue: those in memory (`seqs`) and every one
    /// past `after` (those only on disk). Deliveries in flight are neither.
    Purge { queue: String, seqs: Vec<u64>, after: u64 },
    /// Records how many times a message was delivered, when it goes back to its queue.
    SetDeliveryCount { queue: String, seq: u64, delivery_count: u32 },
    /// Keeps (`Some`) or clears (`None`) the retained message of a topic.
    Retain { topic: String, record: Option<Bytes> },
}

impl Op {
    /// Bytes this write holds until it is applied.
    fn size(&self) -> usize {
        match self {
            Op::Put { record, .. } | Op::Retain { record: Some(record), .. } => record.len(),
            _ => 0,
        }
    }
}

/// A read of the messages of a durable queue that follow `after`, in sequence order:
/// at most `max_count` of them, and no more than `max_bytes` (but at least one).
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub queue: String,
    /// The queue's identity in the router, handed back with the result: a queue
    /// deleted and declared again meanwhile is another queue.
    pub number: u64,
    pub after: u64,
    pub max_count: usize,
    pub max_bytes: usize,
}

/// One stored message of a queue.
#[derive(Debug, PartialEq)]
pub struct StoredRow {
    pub seq: u64,
    pub delivery_count: u32,
    pub record: Vec<u8>,
}

/// The answer to a [`LoadRequest`].
#[derive(Debug)]
pub struct Loaded {
    pub number: u64,
    pub rows: Result<Vec<StoredRow>, String>,
}

enum Command {
    Write(Op),
    Flush(oneshot::Sender<Result<(), String>>),
    Load(LoadRequest),
}

/// A durable queue as found in the database: its definition and how much it holds
/// (its messages stay on disk until consumers take them).
#[derive(Debug)]
pub struct RestoredQueue {
    pub definition: String,
    pub count: usize,
    /// The size of its records.
    pub bytes: usize,
    /// The highest sequence number in it (0 when empty).
    pub last_seq: u64,
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
    backlog: Arc<Backlog>,
    /// Where the answers to [`Store::load`] arrive, until the broker takes it.
    loaded: Mutex<Option<async_mpsc::UnboundedReceiver<Loaded>>>,
}

/// Bytes of writes queued and not applied yet, shared with the writer thread.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    drained: Notify,
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
        let (loaded_tx, loaded_rx) = async_mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let writer_backlog = backlog.clone();
        let writer = std::thread::Builder::new()
            .name("broker-store".into())
            .spawn(move || write_loop(db, rx, &writer_backlog, &loaded_tx))
            .map_err(|source| StoreError::Directory { path: dir.to_owned(), source })?;
        tracing::info!(path = %path.display(), queues = restored.queues.len(), retained = restored.retained.len(), "store opened");
        let store = Store {
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            backlog,
            loaded: Mutex::new(Some(loaded_rx)),
        };
        Ok((store, restored))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write; it is committed with the next group commit.
    pub fn write(&self, op: Op) {
        if let Some(tx) = &*self.tx.lock() {
            self.backlog.bytes.fetch_add(op.size(), Ordering::Relaxed);
            let _ = tx.send(Command::Write(op));
        }
    }

    /// Asks for stored messages of a queue; the answer arrives on [`Store::take_loaded`]'s
    /// receiver, after every write queued before this call.
    pub fn load(&self, request: LoadRequest) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Command::Load(request));
        }
    }

    /// The receiver of the answers to [`Store::load`]; `None` once taken.
    pub fn take_loaded(&self) -> Option<async_mpsc::UnboundedReceiver<Loaded>> {
        self.loaded.lock().take()
    }

    /// True when [`Store::room`] would not wait.
    pub fn has_room(&self) -> bool {
        self.backlog.bytes.load(Ordering::Relaxed) < MAX_PENDING_BYTES
    }

    /// Completes once the writes waiting for the disk hold less than
    /// [`MAX_PENDING_BYTES`]: a connection that publishes waits here before it reads
    /// its next frame, so a publisher faster than the disk is slowed down by TCP
    /// instead of filling memory.
    pub async fn room(&self) {
        loop {
            let drained = self.backlog.drained.notified();
            if self.has_room() {
                return;
            }
            drained.await;
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
    // Only how much each queue holds: its messages are read when consumers take them.
    let mut sizes = db
        .prepare(
            "SELECT count(*), coalesce(sum(length(record)), 0), coalesce(max(seq), 0)
             FROM messages WHERE queue = ?1",
        )
        .map_err(corrupt)?;
    let rows: Vec<(String, String)> = queues
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(corrupt)?
        .collect::<Result<_, _>>()
        .map_err(corrupt)?;
    for (name, definition) in rows {
        let (count, bytes, last_seq) = sizes
            .query_row([&name], |row| {
                Ok((
                    row.get::<_, i64>(0)? as usize,
                    row.get::<_, i64>(1)? as usize,
                    row.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(corrupt)?;
        restored.queues.push(RestoredQueue { definition, count, bytes, last_seq });
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

fn write_loop(
    mut db: Connection,
    rx: mpsc::Receiver<Command>,
    backlog: &Backlog,
    loaded: &async_mpsc::UnboundedSender<Loaded>,
) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut reads = Vec::new();
        let result = apply(&mut db, &batch, &mut reads).map_err(|error| {
            tracing::error!(%error, "writing to the store failed; the writes of this batch are lost");
            error.to_string()
        });
        let applied: usize =
            batch.iter().map(|c| if let Command::Write(op) = c { op.size() } else { 0 }).sum();
        backlog.bytes.fetch_sub(applied, Ordering::Relaxed);
        backlog.drained.notify_waiters();
        for command in batch.drain(..) {
            if let Command::Flush(done) = command {
                let _ = done.send(result.clone());
            }
        }
        // Answered after the commit: what a read saw is on disk.
        for (number, rows) in reads {
            let rows = match &result {
                Ok(()) => rows,
                Err(error) => Err(error.clone()),
            };
            let _ = loaded.send(Loaded { number, rows });
        }
    }
    // Everything queued is committed; fold the WAL back into the database.
    if let Err(error) = db.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(%error, "checkpointing the store on close failed");
    }
}

/// Reads what a [`LoadRequest`] asks for, inside the batch's transaction.
fn read(tx: &rusqlite::Transaction<'_>, request: &LoadRequest) -> rusqlite::Result<Vec<StoredRow>> {
    let mut statement = tx.prepare_cached(
        "SELECT seq, delivery_count, record FROM messages WHERE queue = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = statement.query(params![request.queue, request.after as i64, request.max_count as i64])?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        let record: Vec<u8> = row.get(2)?;
        bytes += record.len();
        out.push(StoredRow { seq: row.get::<_, i64>(0)? as u64, delivery_count: row.get(1)?, record });
        if bytes >= request.max_bytes {
            break;
        }
    }
    Ok(out)
}

fn apply(
    db: &mut Connection,
    batch: &[Command],
    reads: &mut Vec<(u64, Result<Vec<StoredRow>, String>)>,
) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    for command in batch {
        let op = match command {
            Command::Write(op) => op,
            Command::Flush(_) => continue,
            Command::Load(request) => {
                let rows = read(&tx, request).map_err(|error| error.to_string());
                reads.push((request.number, rows));
                continue;
            }
        };
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
            Op::Purge { queue, seqs, after } => {
                let mut remove = tx.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND seq = ?2")?;
                for seq in seqs {
                    remove.execute(params![queue, *seq as i64])?;
                }
                tx.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND seq > ?2")?
                    .execute(params![queue, *after as i64])?;
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
        let (store, restored) = Store::open(&dir, false).unwrap();
        assert_eq!(restored.queues.len(), 1);
        let queue = &restored.queues[0];
        assert_eq!((queue.count, queue.bytes, queue.last_seq), (2, 4, 3), "sizes only, no messages");
        assert_eq!(restored.retained, vec![("a.b".to_owned(), b"r".to_vec())]);
        let mut loaded = store.take_loaded().unwrap();
        store.load(LoadRequest { queue: "q".into(), number: 7, after: 0, max_count: 10, max_bytes: 100 });
        let answer = loaded.recv().await.unwrap();
        assert_eq!(answer.number, 7);
        let rows = answer.rows.unwrap();
        assert_eq!(rows.iter().map(|r| (r.seq, r.delivery_count)).collect::<Vec<_>>(), vec![(1, 0), (3, 2)]);
        assert_eq!(rows[1].record, b"m3");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_load_sees_the_writes_queued_before_it_and_keeps_to_its_bounds() {
        let dir = temp_dir("load");
        let (store, _) = Store::open(&dir, false).unwrap();
        let mut loaded = store.take_loaded().unwrap();
        for seq in 1..=10 {
            let record = Bytes::from(vec![b'x'; 100]);
            store.write(Op::Put { queue: "q".into(), seq, delivery_count: 0, record });
        }
        let request = |after, max_count, max_bytes| LoadRequest {
            queue: "q".into(),
            number: 1,
            after,
            max_count,
            max_bytes,
        };
        store.load(request(0, 4, 1 << 20));
        store.load(request(4, 100, 250));
        store.load(request(8, 100, 1));
        store.load(request(10, 100, 1 << 20));
        let mut seqs = Vec::new();
        for _ in 0..4 {
            seqs.push(loaded.recv().await.unwrap().rows.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>());
        }
        assert_eq!(seqs, vec![vec![1, 2, 3, 4], vec![5, 6, 7], vec![9], vec![]]);
        flushed(&store).await;
        store.room().await;
        drop(store);
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
