//! `rtid audit verify FILE...`: walks the chain across files and names the
//! first record that was edited, removed, inserted or reordered.
//!
//! Each record's hash covers its content and its predecessor's hash, so an
//! attacker without the whole tail to rewrite leaves a break. A line whose
//! content no longer matches its own hash was edited. Otherwise the break is
//! between two self-consistent lines, and what is around it tells which
//! tampering made it (see `classify`). Streaming with a bounded window
//! around the break keeps memory flat however long the trail is.

use std::{
    collections::VecDeque,
    fmt,
    fs::File,
    io::{self, BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use super::record::{self, GENESIS, ParsedRecord, RecordKind};

/// Records kept before, and read after, a break to classify it; tampering
/// that moves a record further than this is still caught, but may be named
/// as a removal or insertion rather than a reordering.
const WINDOW: usize = 1024;

/// A chain that checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    pub files: usize,
    /// The anchor: the first record of the earliest file. Records before it
    /// (rotated away, or in files not given) are not checked.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Gap records, and the records they say were dropped.
    pub gaps: u64,
    pub lost: u64,
    /// To compare with a copy kept elsewhere: only that can show records cut
    /// from (or forged onto) the end, which leave no break.
    pub last_hash: String,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            out,
            "chain intact: {} records, seq {}..={}, in {} file(s).",
            self.records, self.first_seq, self.last_seq, self.files
        )?;
        if self.first_seq == 0 {
            write!(out, " It starts at the beginning of the trail (seq 0).")?;
        } else {
            write!(
                out,
                " It is anchored at seq {}: earlier records were rotated away or are in files not given, and are not checked.",
                self.first_seq
            )?;
        }
        if self.gaps > 0 {
            write!(
                out,
                " {} gap record(s) mark {} record(s) dropped before they could be written.",
                self.gaps, self.lost
            )?;
        }
        write!(out, " Last hash: {}.", self.last_hash)
    }
}

/// What was done to the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TamperingKind {
    Edited,
    /// Records `first..=last` are missing.
    Removed {
        first: u64,
        last: u64,
    },
    Inserted,
    Reordered,
    Malformed,
}

impl fmt::Display for TamperingKind {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TamperingKind::Edited => write!(out, "edited"),
            TamperingKind::Removed { first, last } if first == last => write!(out, "record seq {first} removed"),
            TamperingKind::Removed { first, last } => write!(out, "records seq {first}..={last} removed"),
            TamperingKind::Inserted => write!(out, "inserted"),
            TamperingKind::Reordered => write!(out, "reordered"),
            TamperingKind::Malformed => write!(out, "malformed"),
        }
    }
}

/// The first tampered record: where it is, and what the evidence is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Tampering {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    /// The seq the line claims, if it could be read.
    pub seq: Option<u64>,
    pub kind: TamperingKind,
    pub detail: String,
}

impl fmt::Display for Tampering {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(out, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(out, "seq {seq}: ")?;
        }
        write!(out, "{}: {}", self.kind, self.detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("no records to verify in {files}")]
    NoRecords { files: String },
    #[error(transparent)]
    Tampered(#[from] Tampering),
}

/// Checks the chain through `paths`, given in any order (they are put in the
/// order of their first records). The first record is trusted as the anchor.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    let files = in_chain_order(paths)?;
    let mut reader = TrailReader::new(&files);
    let mut recent: VecDeque<Entry> = VecDeque::with_capacity(WINDOW);
    let mut summary: Option<VerifySummary> = None;
    while let Some(entry) = reader.next_entry()? {
        match recent.back() {
            None => check_anchor(&entry, &files)?,
            Some(last)
                if entry.record.prev == last.record.hash
                    && last.record.seq.checked_add(1) == Some(entry.record.seq) => {}
            Some(_) => {
                let ahead = reader.read_ahead(WINDOW);
                return Err(classify(&files, &recent, &entry, &ahead).at(&files).into());
            }
        }
        tally(&mut summary, &entry.record, paths.len());
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(entry);
    }
    summary.ok_or_else(|| VerifyError::NoRecords { files: list(paths) })
}

fn tally(summary: &mut Option<VerifySummary>, record: &ParsedRecord, files: usize) {
    let summary = summary.get_or_insert_with(|| VerifySummary {
        records: 0,
        files,
        first_seq: record.seq,
        last_seq: record.seq,
        gaps: 0,
        lost: 0,
        last_hash: String::new(),
    });
    summary.records += 1;
    summary.last_seq = record.seq;
    summary.last_hash = hex::encode(record.hash);
    if record.kind == RecordKind::Gap {
        summary.gaps += 1;
        summary.lost += record.lost;
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Only seq 0 starts a chain (a restarted daemon continues the old one).
fn check_anchor(entry: &Entry, files: &[PathBuf]) -> Result<(), Tampering> {
    let starts_chain = entry.record.prev == GENESIS;
    if starts_chain == (entry.record.seq == 0) {
        return Ok(());
    }
    let detail = if starts_chain {
        "it starts a chain but its seq is not 0: changed and re-hashed"
    } else {
        "seq 0 must start the chain, with prev 0000…: changed and re-hashed"
    };
    Err(Finding { at: entry, kind: TamperingKind::Edited, detail: detail.into() }.at(files))
}

/// One record read, with where it is. Only self-consistent records become
/// entries: the reader reports the others.
#[derive(Clone, Debug)]
struct Entry {
    /// Index into the ordered files.
    file: usize,
    line: u64,
    record: ParsedRecord,
}

impl Entry {
    fn same_place(&self, other: &Entry) -> bool {
        (self.file, self.line) == (other.file, other.line)
    }
}

/// Orders the files by the seq of their first record; empty files drop out.
fn in_chain_order(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut firsts = Vec::new();
    for path in paths {
        let mut reader = open(path)?;
        let mut line = Vec::new();
        if read_line(&mut reader, &mut line, path)? {
            let record = record::parse(content(&line)).map_err(|reason| malformed(path, 1, reason))?;
            firsts.push((record.seq, path.clone()));
        }
    }
    firsts.sort_by_key(|(seq, _)| *seq);
    Ok(firsts.into_iter().map(|(_, path)| path).collect())
}

fn open(path: &Path) -> Result<BufReader<File>, VerifyError> {
    File::open(path).map(BufReader::new).map_err(|source| VerifyError::Unreadable { path: path.to_owned(), source })
}

/// Reads one line, with its newline if it has one; `false` at the end.
fn read_line(reader: &mut BufReader<File>, line: &mut Vec<u8>, path: &Path) -> Result<bool, VerifyError> {
    line.clear();
    let read =
        reader.read_until(b'\n', line).map_err(|source| VerifyError::Unreadable { path: path.to_owned(), source })?;
    Ok(read > 0)
}

/// A line as read, without its newline.
fn content(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

fn malformed(path: &Path, line: u64, reason: String) -> Tampering {
    Tampering { file: path.to_owned(), line, seq: None, kind: TamperingKind::Malformed, detail: reason }
}

/// The records of the files, in order, one after the other.
struct TrailReader<'a> {
    files: &'a [PathBuf],
    next_file: usize,
    current: Option<(usize, BufReader<File>)>,
    line_number: u64,
    line: Vec<u8>,
}

impl<'a> TrailReader<'a> {
    fn new(files: &'a [PathBuf]) -> TrailReader<'a> {
        TrailReader { files, next_file: 0, current: None, line_number: 0, line: Vec::new() }
    }

    /// The next self-consistent record; a line that is not one is an error.
    fn next_entry(&mut self) -> Result<Option<Entry>, VerifyError> {
        loop {
            let Some((file, reader)) = &mut self.current else {
                let Some(path) = self.files.get(self.next_file) else { return Ok(None) };
                self.current = Some((self.next_file, open(path)?));
                self.next_file += 1;
                self.line_number = 0;
                continue;
            };
            let (file, path) = (*file, &self.files[*file]);
            if !read_line(reader, &mut self.line, path)? {
                self.current = None;
                continue;
            }
            self.line_number += 1;
            let record = record::parse(content(&self.line)).map_err(|reason| {
                let at_end = !self.line.ends_with(b"\n");
                let reason = if at_end {
                    format!("incomplete last line (a write in progress, or cut by a crash): {reason}")
                } else {
                    reason
                };
                malformed(path, self.line_number, reason)
            })?;
            if !record.intact {
                return Err(Tampering {
                    file: path.clone(),
                    line: self.line_number,
                    seq: Some(record.seq),
                    kind: TamperingKind::Edited,
                    detail: "its content does not match its hash".into(),
                }
                .into());
            }
            return Ok(Some(Entry { file, line: self.line_number, record }));
        }
    }

    /// Up to `limit` further records, stopping at the first line that is not one.
    fn read_ahead(&mut self, limit: usize) -> Vec<Entry> {
        let mut ahead = Vec::new();
        while ahead.len() < limit
            && let Ok(Some(entry)) = self.next_entry()
        {
            ahead.push(entry);
        }
        ahead
    }
}

/// A classified break, before it is given its file name.
struct Finding<'e> {
    at: &'e Entry,
    kind: TamperingKind,
    detail: String,
}

impl Finding<'_> {
    fn at(self, files: &[PathBuf]) -> Tampering {
        Tampering {
            file: files[self.at.file].clone(),
            line: self.at.line,
            seq: Some(self.at.record.seq),
            kind: self.kind,
            detail: self.detail,
        }
    }
}

/// Says which tampering broke the chain between the last of `recent` (all
/// chained in order) and `current`, with `ahead` the records after it.
///
/// Genuine records can only have been removed or moved: each still names its
/// true predecessor. Edited and forged ones are named by no genuine record.
/// So, in order:
/// - `current` is a copy of a record already seen: inserted.
/// - `current` names the last record but has the wrong seq: a second
///   successor of it (inserted) if a later record also names it, else edited.
/// - `current` names an earlier record: it and the records since compete for
///   the same place; whichever branch does not go on was inserted.
/// - a later record names the last one: the chain resumes there, so the
///   records in between are out of place; reordered if any is genuine (named
///   by another record, or the only one to name its predecessor), else inserted.
/// - nothing nearby names the last record or is named by `current`: by seq,
///   a jump means records were removed; the next seq means the last record
///   was edited and re-hashed (`current` still names its original hash); a
///   step back means `current` does not belong (inserted, or reordered if
///   another record names it).
fn classify<'e>(files: &[PathBuf], recent: &'e VecDeque<Entry>, current: &'e Entry, ahead: &'e [Entry]) -> Finding<'e> {
    let last = recent.back().expect("a break needs a record before it");
    let names_last = ahead.iter().find(|entry| entry.record.prev == last.record.hash);
    let found = |at, kind, detail: String| Finding { at, kind, detail };
    let place = |entry: &Entry| place(files, entry);

    if let Some(original) = recent.iter().find(|entry| entry.record.hash == current.record.hash) {
        return found(current, TamperingKind::Inserted, format!("a copy of {}", place(original)));
    }

    if current.record.prev == last.record.hash {
        return match names_last {
            Some(rival) => found(
                current,
                TamperingKind::Inserted,
                format!("it claims to follow {}, but {} does", place(last), place(rival)),
            ),
            None => found(
                current,
                TamperingKind::Edited,
                format!(
                    "it follows seq {} but says seq {}: changed and re-hashed",
                    last.record.seq, current.record.seq
                ),
            ),
        };
    }

    if let Some(fork) = recent.iter().rposition(|entry| entry.record.hash == current.record.prev) {
        let fork_point = &recent[fork];
        let branch_start = &recent[fork + 1];
        return if names_last.is_some() {
            found(
                current,
                TamperingKind::Inserted,
                format!("it claims to follow {}, but {} does", place(fork_point), place(branch_start)),
            )
        } else {
            found(
                branch_start,
                TamperingKind::Inserted,
                format!(
                    "{} continues the chain from {}: the record(s) from here to {} do not belong",
                    place(current),
                    place(fork_point),
                    place(last)
                ),
            )
        };
    }

    let window = || recent.iter().chain(std::iter::once(current)).chain(ahead);
    if let Some(resumes) = names_last {
        let displaced = std::iter::once(current).chain(ahead.iter().take_while(|entry| !entry.same_place(resumes)));
        return if displaced.into_iter().any(|entry| is_genuine(entry, window)) {
            found(
                current,
                TamperingKind::Reordered,
                format!("the record after {} is at {}", place(last), place(resumes)),
            )
        } else {
            found(
                current,
                TamperingKind::Inserted,
                format!("no record names it; the chain goes on from {} at {}", place(last), place(resumes)),
            )
        };
    }

    // Saturating: a forged seq may be anything.
    let (last_seq, seq) = (last.record.seq, current.record.seq);
    let next_seq = last_seq.saturating_add(1);
    if seq > next_seq {
        found(
            current,
            TamperingKind::Removed { first: next_seq, last: seq - 1 },
            format!("missing between {} and this record", place(last)),
        )
    } else if seq == next_seq {
        found(
            last,
            TamperingKind::Edited,
            format!("{} names a different hash for it: changed and re-hashed", place(current)),
        )
    } else if is_named(current, window) {
        found(current, TamperingKind::Reordered, format!("seq {seq} does not belong after seq {last_seq}"))
    } else {
        found(current, TamperingKind::Inserted, format!("seq {seq} after seq {last_seq}, and no record names it"))
    }
}

/// Whether some other record names this one as its predecessor.
fn is_named<'e, I: Iterator<Item = &'e Entry>>(entry: &Entry, window: impl Fn() -> I) -> bool {
    window().any(|other| !other.same_place(entry) && other.record.prev == entry.record.hash)
}

/// Whether a record is part of the chain: named by another, or the only one
/// naming its predecessor (which a forged copy of a `prev` is not).
fn is_genuine<'e, I: Iterator<Item = &'e Entry>>(entry: &Entry, window: impl Fn() -> I) -> bool {
    if is_named(entry, &window) {
        return true;
    }
    let names_a_record = window().any(|other| other.record.hash == entry.record.prev);
    let rivals = window().filter(|other| !other.same_place(entry) && other.record.prev == entry.record.prev).count();
    names_a_record && rivals == 0
}

fn place(files: &[PathBuf], entry: &Entry) -> String {
    format!("{}:{} (seq {})", files[entry.file].display(), entry.line, entry.record.seq)
}
