//! The writer: callers hand records to a bounded queue without ever waiting;
//! one thread owns the file, chains, batches, fsyncs and rotates.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::record::{self, ChainHead, RecordKind};
use crate::daemon::config::AuditConfig;
pub use crate::rotation::rotated_path;
use crate::rotation::{remove_if_present, rename_if_present};

/// Records waiting for the writer thread; beyond this they are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 65536;

/// Most queued messages taken into one write.
const MAX_BATCH: usize = 1024;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    /// A decision other than a plain allow.
    Decision,
    /// A change of identity, label, grant, approval or policy.
    Change,
}

impl From<AuditKind> for RecordKind {
    fn from(kind: AuditKind) -> RecordKind {
        match kind {
            AuditKind::Decision => RecordKind::Decision,
            AuditKind::Change => RecordKind::Change,
        }
    }
}

/// Counters since `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records appended and written to the file.
    pub written: u64,
    /// Records appended but not written: the queue was full, the writer had
    /// stopped, or the write failed. Each loss is also marked in the trail by
    /// a gap record, except after the writer stopped.
    pub dropped: u64,
    /// Failed writes, fsyncs and rotations (each is also logged).
    pub io_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: cannot create its directory: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("audit log {}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("audit log {}: cannot read its last record: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "audit log {}: its last record is unreadable ({reason}); the chain cannot be continued. \
         Check it with `rtid audit verify`, then move the files aside",
        path.display()
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("audit log {}: cannot repair the record torn by a crash: {source}", path.display())]
    Repair { path: PathBuf, source: io::Error },
    #[error("audit log {}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("audit log {}: cannot fsync: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("audit log {}: cannot rotate ({step}): {source}", path.display())]
    Rotate { path: PathBuf, step: String, source: io::Error },
    #[error("audit log {}: another writer (a second daemon?) holds it; two would fork the chain", path.display())]
    Locked { path: PathBuf },
    #[error("audit log {}: cannot start the writer thread: {source}", path.display())]
    Spawn { path: PathBuf, source: io::Error },
}

/// The handle the daemon appends through. Cheap to clone; the last clone
/// dropped stops the writer as [`AuditWriter::flush_and_stop`] does.
#[derive(Clone)]
pub struct AuditWriter {
    shared: Arc<Shared>,
}

struct Shared {
    queue: SyncSender<Message>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    io_errors: AtomicU64,
    /// Dropped by `append` and not yet carried to the writer by a message.
    unreported: AtomicU64,
}

struct Message {
    /// Records dropped just before this message: the writer marks them with a
    /// gap record here, so the trail shows where the loss was.
    lost_before: u64,
    action: Action,
}

enum Action {
    Record {
        kind: RecordKind,
        time: SystemTime,
        body: serde_json::Value,
    },
    /// Write and fsync everything before this, then answer.
    Flush(SyncSender<()>),
    /// As `Flush`, then end the thread.
    Stop(SyncSender<()>),
    /// Tests: answer `held`, then wait for `release`, so the queue fills.
    #[cfg(test)]
    Hold {
        held: SyncSender<()>,
        release: Receiver<()>,
    },
}

/// Opens (or creates) the log, continues its chain, and starts the writer.
pub fn start(config: &AuditConfig) -> Result<AuditWriter, AuditError> {
    start_with_capacity(config, QUEUE_CAPACITY)
}

pub(crate) fn start_with_capacity(config: &AuditConfig, capacity: usize) -> Result<AuditWriter, AuditError> {
    let counters = Arc::new(Counters::default());
    let log = LiveLog::open(config)?;
    let (queue, inbox) = mpsc::sync_channel(capacity);
    let writer = Writer {
        log,
        counters: Arc::clone(&counters),
        flush_interval: config.flush_interval,
        unsynced_since: None,
        lost_in_writer: 0,
    };
    let thread = std::thread::Builder::new()
        .name("rtid-audit".into())
        .spawn(move || writer.run(inbox))
        .map_err(|source| AuditError::Spawn { path: config.path.clone(), source })?;
    Ok(AuditWriter { shared: Arc::new(Shared { queue, counters, thread: Mutex::new(Some(thread)) }) })
}

impl AuditWriter {
    /// Queues a record; never waits. When the queue is full the record is
    /// dropped, counted, and marked by a gap record in the trail.
    pub fn append(&self, kind: AuditKind, body: serde_json::Value) {
        let action = Action::Record { kind: kind.into(), time: SystemTime::now(), body };
        let counters = &self.shared.counters;
        let lost_before = counters.unreported.swap(0, Ordering::Relaxed);
        match self.shared.queue.try_send(Message { lost_before, action }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                counters.unreported.fetch_add(lost_before + 1, Ordering::Relaxed);
            }
            // The writer has stopped: nothing will write a gap record, but
            // the loss still shows in `stats`.
            Err(TrySendError::Disconnected(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> AuditStats {
        let counters = &self.shared.counters;
        AuditStats {
            written: counters.written.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            io_errors: counters.io_errors.load(Ordering::Relaxed),
        }
    }

    /// Blocks until every record appended before the call is written and
    /// fsynced. (From async code, call it in `spawn_blocking`.)
    pub fn flush(&self) {
        self.shared.request(Action::Flush);
    }

    /// For shutdown: writes and fsyncs everything queued, then ends the
    /// writer thread. Blocks until done; later appends are counted as dropped.
    pub fn flush_and_stop(&self) {
        self.shared.stop();
    }
}

impl Shared {
    /// Sends a control message (waiting for room, unlike `append`) and waits
    /// for the writer's answer. If the writer is gone there is nothing to wait for.
    fn request(&self, action: fn(SyncSender<()>) -> Action) {
        let (answer, answered) = mpsc::sync_channel(1);
        let lost_before = self.counters.unreported.swap(0, Ordering::Relaxed);
        if self.queue.send(Message { lost_before, action: action(answer) }).is_ok() {
            let _ = answered.recv();
        }
    }

    /// Holds the lock throughout, so a second caller returns only once stopped.
    fn stop(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(thread) = thread.take() {
            self.request(Action::Stop);
            if thread.join().is_err() {
                tracing::error!("audit: the writer thread panicked");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread's state.
struct Writer {
    log: LiveLog,
    counters: Arc<Counters>,
    flush_interval: Duration,
    /// When the oldest write not yet fsynced was made.
    unsynced_since: Option<Instant>,
    /// Records this thread failed to write, not yet marked by a gap record.
    lost_in_writer: u64,
}

impl Writer {
    fn run(mut self, inbox: Receiver<Message>) {
        while let Some(first) = self.next_message(&inbox) {
            let mut batch = vec![first];
            batch.extend(inbox.try_iter().take(MAX_BATCH - 1));
            if !self.handle(batch) {
                return;
            }
            if self.sync_is_due() {
                self.sync();
            }
        }
        // Every handle is gone without a stop: still make the tail durable.
        self.sync();
    }

    /// Waits for a message, fsyncing on the way when the interval is up.
    /// `None` when every sender is gone.
    fn next_message(&mut self, inbox: &Receiver<Message>) -> Option<Message> {
        loop {
            let Some(since) = self.unsynced_since else {
                return inbox.recv().ok();
            };
            let wait = (since + self.flush_interval).saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(message) => return Some(message),
                Err(RecvTimeoutError::Timeout) => self.sync(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn sync_is_due(&self) -> bool {
        self.unsynced_since.is_some_and(|since| since.elapsed() >= self.flush_interval)
    }

    /// Writes a batch, running control messages in order. `false` once stopped.
    fn handle(&mut self, batch: Vec<Message>) -> bool {
        let mut pending = Vec::new();
        for Message { lost_before, action } in batch {
            match action {
                Action::Record { kind, time, body } => pending.push(Pending { lost_before, kind, time, body }),
                Action::Flush(answer) => {
                    self.write(std::mem::take(&mut pending), lost_before);
                    self.sync();
                    let _ = answer.send(());
                }
                Action::Stop(answer) => {
                    self.write(std::mem::take(&mut pending), lost_before);
                    self.sync();
                    let _ = answer.send(());
                    return false;
                }
                #[cfg(test)]
                Action::Hold { held, release } => {
                    self.write(std::mem::take(&mut pending), lost_before);
                    let _ = held.send(());
                    let _ = release.recv();
                }
            }
        }
        self.write(pending, 0);
        true
    }

    /// Writes records, each preceded, where records were lost just before it,
    /// by a gap record; `lost_after` are losses after the last of them.
    fn write(&mut self, records: Vec<Pending>, lost_after: u64) {
        let mut chunk = Chunk::new(self.log.head);
        for Pending { lost_before, kind, time, body } in records {
            self.lost_in_writer += lost_before;
            if self.lost_in_writer > 0 {
                self.push_gap(&mut chunk, time);
            }
            self.push(&mut chunk, kind, time, &body, 1, 0);
        }
        self.lost_in_writer += lost_after;
        if self.lost_in_writer > 0 {
            self.push_gap(&mut chunk, SystemTime::now());
        }
        self.write_chunk(&mut chunk);
    }

    fn push_gap(&mut self, chunk: &mut Chunk, time: SystemTime) {
        let lost = std::mem::take(&mut self.lost_in_writer);
        self.push(chunk, RecordKind::Gap, time, &serde_json::json!({ "lost": lost }), 0, lost);
    }

    /// Adds a line to the chunk, first writing the chunk and rotating if the
    /// line would take the live file past its size limit.
    fn push(
        &mut self,
        chunk: &mut Chunk,
        kind: RecordKind,
        time: SystemTime,
        body: &serde_json::Value,
        records: u64,
        gap_lost: u64,
    ) {
        let mut head = chunk.head;
        let mut line = record::render(&mut head, kind, time, body);
        if self.log.must_rotate_before(chunk.bytes.len() as u64, line.len() as u64) {
            let rendered_at = chunk.head;
            self.write_chunk(chunk);
            self.rotate();
            if chunk.head != rendered_at {
                // The write failed and the chain rolled back: chain this line anew.
                head = chunk.head;
                line = record::render(&mut head, kind, time, body);
            }
        }
        chunk.push(line, head, records, gap_lost);
    }

    /// Writes a chunk in one write and empties it, at the new chain head. On
    /// failure its records become lost records, marked by the next gap record.
    fn write_chunk(&mut self, chunk: &mut Chunk) {
        if chunk.bytes.is_empty() {
            return;
        }
        match self.log.write(&chunk.bytes, chunk.head) {
            Ok(()) => {
                self.counters.written.fetch_add(chunk.records, Ordering::Relaxed);
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
            Err(error) => {
                self.io_error(&error);
                self.counters.dropped.fetch_add(chunk.records, Ordering::Relaxed);
                // The losses the chunk's own gap records carried need marking again.
                self.lost_in_writer += chunk.records + chunk.gap_lost;
            }
        }
        *chunk = Chunk::new(self.log.head);
    }

    fn rotate(&mut self) {
        self.sync();
        if let Err(error) = self.log.rotate() {
            self.io_error(&error);
        }
    }

    fn sync(&mut self) {
        if self.unsynced_since.take().is_some()
            && let Err(error) = self.log.sync()
        {
            self.io_error(&error);
        }
    }

    fn io_error(&self, error: &AuditError) {
        self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("{error}");
    }
}

/// A record taken from the queue, not yet written.
struct Pending {
    lost_before: u64,
    kind: RecordKind,
    time: SystemTime,
    body: serde_json::Value,
}

/// Lines to be written together, and the chain head after them.
struct Chunk {
    bytes: Vec<u8>,
    head: ChainHead,
    /// Appended records in `bytes` (gap records not counted).
    records: u64,
    /// Losses the gap records in `bytes` report.
    gap_lost: u64,
}

impl Chunk {
    fn new(head: ChainHead) -> Chunk {
        Chunk { bytes: Vec::new(), head, records: 0, gap_lost: 0 }
    }

    fn push(&mut self, line: Vec<u8>, head: ChainHead, records: u64, gap_lost: u64) {
        self.bytes.extend_from_slice(&line);
        self.head = head;
        self.records += records;
        self.gap_lost += gap_lost;
    }
}

/// The live file, its size, and the chain head after its last record.
struct LiveLog {
    path: PathBuf,
    file: File,
    len: u64,
    head: ChainHead,
    max_size: u64,
    keep: u32,
    /// Size at which to rotate: `max_size`, or further on after a failed rotation
    /// (so a failing rename is retried once per `max_size`, not on every record).
    rotate_at: u64,
}

impl LiveLog {
    fn open(config: &AuditConfig) -> Result<LiveLog, AuditError> {
        let path = config.path.clone();
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| AuditError::CreateDir { path: path.clone(), source })?;
        }
        let file = open_for_append(&path)?;
        lock(&file, &path)?;
        let max_size = config.max_size.as_u64();
        // keep 0 would delete the live file's records at each rotation; the
        // config refuses it, this keeps a hand-built config safe too.
        let keep = config.keep.max(1);
        let mut log = LiveLog { path, file, len: 0, head: ChainHead::GENESIS, max_size, keep, rotate_at: max_size };
        let torn = log.continue_chain()?;
        if torn > 0 {
            log.mark_torn(torn)?;
        }
        Ok(log)
    }

    /// Finds the last record (in the live file or, if it has none, the newest
    /// rotated file) so that new records chain on from it. Returns how many
    /// bytes of a record torn by a crash were cut from the live file's end.
    fn continue_chain(&mut self) -> Result<u64, AuditError> {
        let tail = read_tail(&self.file).map_err(|source| AuditError::Read { path: self.path.clone(), source })?;
        self.len = tail.complete_len;
        let mut torn = 0;
        if tail.torn_len > 0 {
            // A write cut short by a crash. If it is a whole record missing only
            // its newline, keep it; otherwise cut it (and mark it, below).
            if record::parse(&tail.torn).is_ok_and(|parsed| parsed.intact) {
                self.write_raw(b"\n").map_err(|source| AuditError::Repair { path: self.path.clone(), source })?;
                self.len += tail.torn_len + 1;
                let path = self.path.clone();
                return self.chain_from(&path, &tail.torn).map(|()| 0);
            }
            self.file
                .set_len(tail.complete_len)
                .map_err(|source| AuditError::Repair { path: self.path.clone(), source })?;
            torn = tail.torn_len;
        }
        if let Some(last) = tail.last_line {
            let path = self.path.clone();
            self.chain_from(&path, &last)?;
            return Ok(torn);
        }
        for k in 1..=self.keep {
            let rotated = rotated_path(&self.path, k);
            let file = match File::open(&rotated) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(AuditError::Read { path: rotated, source });
                }
            };
            let tail = read_tail(&file).map_err(|source| AuditError::Read { path: rotated.clone(), source })?;
            if let Some(last) = tail.last_line {
                self.chain_from(&rotated, &last)?;
                break;
            }
        }
        Ok(torn)
    }

    fn chain_from(&mut self, path: &Path, last_line: &[u8]) -> Result<(), AuditError> {
        let last =
            record::parse(last_line).map_err(|reason| AuditError::Unreadable { path: path.to_owned(), reason })?;
        if !last.intact {
            // Keep the daemon auditing; verify will name this record.
            tracing::warn!(
                "audit log {}: the last record (seq {}) does not match its hash; continuing the chain from it",
                path.display(),
                last.seq
            );
        }
        self.head = ChainHead { next_seq: last.seq.saturating_add(1), prev: last.hash };
        Ok(())
    }

    /// Marks, with a gap record, where a crash tore a write.
    fn mark_torn(&mut self, torn_bytes: u64) -> Result<(), AuditError> {
        let mut head = self.head;
        let body = serde_json::json!({ "tornBytes": torn_bytes });
        let line = record::render(&mut head, RecordKind::Gap, SystemTime::now(), &body);
        self.write(&line, head)?;
        self.sync()
    }

    /// Whether a line must go to a fresh file: it would take the live file
    /// past the limit, counting `unwritten` bytes queued before it. A line
    /// alone larger than the limit still goes into an empty file.
    fn must_rotate_before(&self, unwritten: u64, line: u64) -> bool {
        let before = self.len + unwritten;
        before > 0 && before + line > self.rotate_at
    }

    /// Appends whole lines; the chain head moves only if they were written.
    fn write(&mut self, bytes: &[u8], head_after: ChainHead) -> Result<(), AuditError> {
        match self.write_raw(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.head = head_after;
                Ok(())
            }
            Err(source) => {
                // Cut any partial line so later records stay parsable.
                if let Err(error) = self.file.set_len(self.len) {
                    tracing::error!("audit log {}: cannot cut a partial write: {error}", self.path.display());
                }
                Err(AuditError::Write { path: self.path.clone(), source })
            }
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(|source| AuditError::Sync { path: self.path.clone(), source })
    }

    /// `path.(keep)` is deleted, `path.(k)` becomes `path.(k+1)`, `path`
    /// becomes `path.1`, and a fresh `path` is opened. The old file stays
    /// open until the new one is, so a failure keeps records going somewhere.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let live = self.path.clone();
        let step_failed = |step: String| {
            let path = live.clone();
            move |source| AuditError::Rotate { path, step, source }
        };
        self.rotate_at = self.len + self.max_size;
        let oldest = rotated_path(&self.path, self.keep);
        remove_if_present(&oldest).map_err(step_failed(format!("delete {}", oldest.display())))?;
        for k in (1..self.keep).rev() {
            let (from, to) = (rotated_path(&self.path, k), rotated_path(&self.path, k + 1));
            rename_if_present(&from, &to).map_err(step_failed(format!(
                "rename {} to {}",
                from.display(),
                to.display()
            )))?;
        }
        let newest = rotated_path(&self.path, 1);
        rename_if_present(&self.path, &newest).map_err(step_failed(format!("rename to {}", newest.display())))?;
        let fresh = open_for_append(&self.path)?;
        if let Err(error) = lock(&fresh, &self.path) {
            tracing::warn!("{error}");
        }
        self.file = fresh;
        self.len = 0;
        self.rotate_at = self.max_size;
        sync_parent(&self.path);
        Ok(())
    }
}

fn open_for_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| AuditError::Open { path: path.to_owned(), source })
}

/// Holds the live file exclusively while this writer has it open (the lock
/// goes with the file), so a second daemon cannot write a rival chain.
/// Where the file system has no locks, writing goes on unprotected.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(AuditError::Locked { path: path.to_owned() }),
        Err(TryLockError::Error(error)) => {
            tracing::warn!("audit log {}: cannot lock it ({error}); writing without the lock", path.display());
            Ok(())
        }
    }
}

/// Makes the renames durable. Failure only risks the names after a crash,
/// not the records, so it is logged rather than failing the rotation.
fn sync_parent(path: &Path) {
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err(error) = File::open(parent).and_then(|dir| dir.sync_all()) {
        tracing::warn!("audit: cannot fsync directory {}: {error}", parent.display());
    }
}

/// The end of a file: its last complete line, and what follows it.
struct Tail {
    last_line: Option<Vec<u8>>,
    /// Length up to and including the last newline.
    complete_len: u64,
    /// Bytes after the last newline (a write torn by a crash).
    torn: Vec<u8>,
    torn_len: u64,
}

/// Reads backwards from the end, doubling the window, until the last complete
/// line is in it; a restart so reads one record, not the whole file.
fn read_tail(file: &File) -> io::Result<Tail> {
    let len = file.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        let mut bytes = vec![0; (len - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        let last_newline = bytes.iter().rposition(|&byte| byte == b'\n');
        let line_start =
            last_newline.and_then(|end| bytes[..end].iter().rposition(|&byte| byte == b'\n').map(|at| at + 1));
        let found = match (last_newline, line_start) {
            (Some(_), Some(_)) => true,
            // The window reaches the file's start: whatever there is, is all there is.
            _ => start == 0,
        };
        if found {
            let complete = last_newline.map_or(0, |end| end + 1);
            let last_line = last_newline.map(|end| bytes[line_start.unwrap_or(0)..end].to_vec());
            return Ok(Tail {
                last_line,
                complete_len: start + complete as u64,
                torn_len: (bytes.len() - complete) as u64,
                torn: bytes[complete..].to_vec(),
            });
        }
        window = window.saturating_mul(2);
    }
}

#[cfg(test)]
impl AuditWriter {
    /// Parks the writer thread (once it has written what came before) until
    /// the returned sender is dropped, so tests can fill the queue.
    pub(super) fn hold(&self) -> SyncSender<()> {
        let (held, is_held) = mpsc::sync_channel(1);
        let (release, released) = mpsc::sync_channel(1);
        let hold = Message { lost_before: 0, action: Action::Hold { held, release: released } };
        self.shared.queue.send(hold).expect("the writer is running");
        is_held.recv().expect("the writer parks");
        release
    }
}
