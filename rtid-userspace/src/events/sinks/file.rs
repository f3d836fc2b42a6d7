//! File sink: every event becomes one line appended to `path` (JSON lines in
//! the sink's format), and the file is rotated by size so that a busy node
//! never fills its disk: `path` is the live file, `path.1` the newest rotated
//! one ... `path.<keep>` the oldest; older ones are deleted.
//!
//! The sink never blocks anything upstream: it reads its own bounded queue,
//! writes whatever is queued in one `write`, and a failed write only costs
//! the events of that batch (counted as dropped, with an error); the file is
//! opened again for the next batch.
//!
//! File IO blocks, so the sink runs on a dedicated thread reading the queue
//! with `blocking_recv` rather than on tokio's workers. A thread of its own
//! (rather than `spawn_blocking` per batch) means a stalled disk ties up
//! exactly one thread, never the runtime or its shared blocking pool, and a
//! batch costs no task hand-off.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use crate::{
    events::pipeline::{Format, SharedRecord, SinkInput},
    rotation::{remove_if_present, rename_if_present, rotated_path},
};

/// Most events written in one batch: bounds the batch buffer even if the
/// queue was configured very large.
const MAX_BATCH: usize = 1024;

/// Appends the events of `input` to `path` until the queue closes (the
/// daemon dropped its end); rotates before a write would take the file past
/// `max_size` bytes, keeping at most `keep` rotated files.
pub async fn run(path: PathBuf, max_size: u64, keep: u32, input: SinkInput) {
    let stats = input.stats.clone();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let writer = RotatingFile::new(path.clone(), max_size, keep);
    let spawned = std::thread::Builder::new().name("rtid-file-sink".into()).spawn(move || {
        write_until_closed(writer, input);
        let _ = done.send(());
    });
    if let Err(error) = spawned {
        // The queue went down with the closure: the pipeline counts what it
        // can no longer take.
        stats.error();
        tracing::error!(path = %path.display(), %error, "file sink: cannot start its writer thread");
        return;
    }
    if finished.await.is_err() {
        stats.error();
        tracing::error!(path = %path.display(), "file sink: writer thread ended abnormally");
    }
}

/// The writer thread: one batch per wake-up, until the queue is closed and empty.
fn write_until_closed(mut file: RotatingFile, mut input: SinkInput) {
    let mut failures = FailureLog::default();
    while let Some(first) = input.receiver.blocking_recv() {
        let batch = drain_batch(first, &mut input);
        let lines: Vec<Vec<u8>> = batch.iter().map(|record| line(input.format, record)).collect();
        let (written, error) = file.append(&lines);
        input.stats.delivered(written as u64);
        match error {
            None => failures.succeeded(&file.path),
            Some(error) => {
                input.stats.error();
                input.stats.dropped((lines.len() - written) as u64);
                failures.failed(&file.path, &error);
            }
        }
    }
}

/// `first` and whatever else is queued right now, up to `MAX_BATCH`.
fn drain_batch(first: SharedRecord, input: &mut SinkInput) -> Vec<SharedRecord> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match input.receiver.try_recv() {
            Ok(record) => batch.push(record),
            Err(_) => break,
        }
    }
    batch
}

fn line(format: Format, record: &SharedRecord) -> Vec<u8> {
    let mut line = format.encode(record);
    line.push(b'\n');
    line
}

/// Logs the first failure of a run of failures and the recovery, not every
/// failed batch: a full disk must not also flood the daemon's log.
#[derive(Default)]
struct FailureLog {
    failing: bool,
}

impl FailureLog {
    fn failed(&mut self, path: &Path, error: &io::Error) {
        if !self.failing {
            tracing::warn!(path = %path.display(), %error, "file sink: write failed, dropping events until it works again");
        }
        self.failing = true;
    }

    fn succeeded(&mut self, path: &Path) {
        if self.failing {
            tracing::info!(path = %path.display(), "file sink: writing again");
        }
        self.failing = false;
    }
}

/// The live file and its rotated predecessors.
struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    /// None until opened, and again after any failure (so the next batch
    /// opens the file afresh).
    file: Option<File>,
    /// Bytes in the live file.
    size: u64,
}

impl RotatingFile {
    fn new(path: PathBuf, max_size: u64, keep: u32) -> RotatingFile {
        RotatingFile { path, max_size, keep, file: None, size: 0 }
    }

    /// Appends `lines` (each ending in '\n') in order, rotating where needed.
    /// Returns how many were written, and the error that stopped the rest.
    fn append(&mut self, lines: &[Vec<u8>]) -> (usize, Option<io::Error>) {
        let result = self.try_append(lines);
        if result.1.is_some() {
            self.file = None;
        }
        result
    }

    fn try_append(&mut self, lines: &[Vec<u8>]) -> (usize, Option<io::Error>) {
        if let Err(error) = self.ensure_open() {
            return (0, Some(error));
        }
        let mut written = 0;
        // Lines bound for the current file, written with one `write_all`.
        let mut chunk = Vec::new();
        let mut chunk_lines = 0;
        for line in lines {
            if self.needs_rotation(chunk.len(), line.len()) {
                if let Err(error) = self.write_chunk(&chunk) {
                    return (written, Some(error));
                }
                written += chunk_lines;
                chunk.clear();
                chunk_lines = 0;
                if let Err(error) = self.rotate() {
                    return (written, Some(error));
                }
            }
            chunk.extend_from_slice(line);
            chunk_lines += 1;
        }
        match self.write_chunk(&chunk) {
            Ok(()) => (written + chunk_lines, None),
            Err(error) => (written, Some(error)),
        }
    }

    /// Whether `line` must go into a new file: the live file plus what is
    /// pending for it is not empty and would grow past `max_size`. An empty
    /// file takes any line, so a line longer than `max_size` gets a file of
    /// its own instead of being refused.
    fn needs_rotation(&self, pending: usize, line: usize) -> bool {
        let used = self.size + pending as u64;
        used > 0 && used + line as u64 > self.max_size
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let file = self.ensure_open()?;
        file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn ensure_open(&mut self) -> io::Result<&mut File> {
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let (file, size) = open_for_append(&self.path)?;
                self.size = size;
                file
            }
        };
        Ok(self.file.insert(file))
    }

    /// `path.<keep>` goes, `path.<k>` becomes `path.<k+1>`, `path` becomes
    /// `path.1`, and a new, empty `path` is opened.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            remove_if_present(&self.path)?;
        } else {
            remove_if_present(&rotated_path(&self.path, self.keep))?;
            for k in (1..self.keep).rev() {
                rename_if_present(&rotated_path(&self.path, k), &rotated_path(&self.path, k + 1))?;
            }
            rename_if_present(&self.path, &rotated_path(&self.path, 1))?;
        }
        self.ensure_open().map(|_| ())
    }
}

/// Opens (creating it and its directories) `path` for appending; returns it
/// and its size. A file left ending in a partial line by an earlier failed
/// write gets a newline first, so every later event is still a line of its own.
fn open_for_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
    let mut size = file.metadata()?.len();
    if size > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, size - 1)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            size += 1;
        }
    }
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, atomic::Ordering},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::events::{
        pipeline::{Pipeline, SinkStats, sink_queue},
        record::EventRecord,
    };
    use crate::test_support::{TempDir, sample_event};

    /// A directory under the system temp dir, removed when dropped (also
    /// when the test fails).
    fn record(seq: u64, path: &str) -> SharedRecord {
        Arc::new(sample_event(seq, "file", path))
    }

    fn line_len(record: &SharedRecord) -> u64 {
        Format::Json.encode(record).len() as u64 + 1
    }

    /// Starts the sink on `path` and returns its producer end, its counters
    /// and the task (which ends once the pipeline is dropped).
    fn start(path: PathBuf, max_size: u64, keep: u32) -> (Pipeline, Arc<SinkStats>, tokio::task::JoinHandle<()>) {
        let (queue, input) = sink_queue("file", Format::Json, 1024);
        let stats = input.stats.clone();
        let mut pipeline = Pipeline::default();
        pipeline.add(queue);
        (pipeline, stats, tokio::spawn(run(path, max_size, keep, input)))
    }

    /// The `seq` of every line of `path`, each line parsed as JSON.
    fn seqs(path: &Path) -> Vec<u64> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<EventRecord>(line).unwrap().seq)
            .collect()
    }

    /// Polls `done` without blocking the runtime (the sink's task must run).
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn lines_arrive_in_order_as_json_and_are_counted() {
        let dir = TempDir::new("file-sink-order");
        let path = dir.0.join("nested/dir/events.jsonl");
        let (pipeline, stats, task) = start(path.clone(), 1 << 30, 3);
        for seq in 0..200 {
            pipeline.publish(&record(seq, "/x"));
        }
        drop(pipeline);
        task.await.unwrap();
        assert_eq!(seqs(&path), (0..200).collect::<Vec<_>>());
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 200);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn rotation_keeps_at_most_keep_files_none_past_max_size() {
        let dir = TempDir::new("file-sink-rotate");
        let path = dir.0.join("events.jsonl");
        let line = line_len(&record(10, "/x"));
        // Room for three lines (and a bit) per file.
        let max_size = line * 3 + line / 2;
        let (pipeline, stats, task) = start(path.clone(), max_size, 3);
        // A first batch, then one event at a time: rotation within a batch
        // and across batches.
        for seq in 10..30 {
            pipeline.publish(&record(seq, "/x"));
        }
        wait_for("the first batch", || stats.delivered.load(Ordering::Relaxed) == 20).await;
        for seq in 30..49 {
            pipeline.publish(&record(seq, "/x"));
            wait_for("each event", || stats.delivered.load(Ordering::Relaxed) == seq - 9).await;
        }
        drop(pipeline);
        task.await.unwrap();

        assert!(!rotated_path(&path, 4).exists(), "more than keep=3 rotated files");
        let mut kept = Vec::new();
        for file in [rotated_path(&path, 3), rotated_path(&path, 2), rotated_path(&path, 1), path.clone()] {
            let size = fs::metadata(&file).unwrap().len();
            assert!(size <= max_size, "{} has {size} bytes, more than {max_size}", file.display());
            assert_eq!(seqs(&file).len(), 3, "{} is not filled up to max_size", file.display());
            kept.extend(seqs(&file));
        }
        // Oldest to newest, ending with the last event: nothing lost in between.
        assert_eq!(kept, (37..49).collect::<Vec<_>>());
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 39);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_line_longer_than_max_size_gets_a_file_of_its_own() {
        let dir = TempDir::new("file-sink-long");
        let path = dir.0.join("events.jsonl");
        let small = line_len(&record(0, "/x"));
        let max_size = small * 2 + small / 2;
        let (pipeline, stats, task) = start(path.clone(), max_size, 5);
        let long_path = "/long".repeat(200);
        assert!(line_len(&record(2, &long_path)) > max_size);
        pipeline.publish(&record(0, "/x"));
        pipeline.publish(&record(1, "/x"));
        pipeline.publish(&record(2, &long_path));
        pipeline.publish(&record(3, "/x"));
        drop(pipeline);
        task.await.unwrap();
        assert_eq!(seqs(&rotated_path(&path, 2)), [0, 1]);
        assert_eq!(seqs(&rotated_path(&path, 1)), [2]);
        assert_eq!(seqs(&path), [3]);
        assert!(!rotated_path(&path, 3).exists());
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_failing_write_counts_errors_and_drops_then_recovers() {
        let dir = TempDir::new("file-sink-fail");
        // The parent "directory" is a file: opening fails until it is gone.
        let blocker = dir.0.join("logs");
        fs::write(&blocker, b"not a directory").unwrap();
        let path = blocker.join("events.jsonl");
        let (pipeline, stats, task) = start(path.clone(), 1 << 20, 2);
        for seq in 0..3 {
            pipeline.publish(&record(seq, "/x"));
        }
        wait_for("the drops", || stats.dropped.load(Ordering::Relaxed) == 3).await;
        assert!(stats.errors.load(Ordering::Relaxed) >= 1);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);

        fs::remove_file(&blocker).unwrap();
        pipeline.publish(&record(3, "/x"));
        pipeline.publish(&record(4, "/x"));
        drop(pipeline);
        task.await.unwrap();
        assert_eq!(seqs(&path), [3, 4]);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_partial_last_line_is_ended_before_appending() {
        let dir = TempDir::new("file-sink-partial");
        let path = dir.0.join("events.jsonl");
        fs::write(&path, b"{\"cut\":").unwrap();
        let mut file = RotatingFile::new(path.clone(), 1 << 20, 1);
        let (written, error) = file.append(&[b"{}\n".to_vec()]);
        assert_eq!((written, error.map(|e| e.kind())), (1, None));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"cut\":\n{}\n");
    }
}
