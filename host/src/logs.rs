//! Tenant logs: guest stdout/stderr and the host's notes about a tenant's requests.
//!
//! Sits beside the instance stage: every request's WASI stdout and stderr are
//! [`LogSink`]s that split output into lines, tag them with the request id, keep
//! the last N lines per tenant in memory ([`TenantLogs`]) and emit each through
//! `tracing`. Both ends are bounded, so a guest printing gigabytes costs the host
//! a fixed amount of memory and a counter.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; longer lines are cut and marked with `…`.
const MAX_LINE_BYTES: usize = 4096;

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// A note from the host about the request (a trap, a limit hit).
    Host,
}

impl LogStream {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Host => "host",
        }
    }

    /// Parses a stored name; anything unknown is a host line.
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            _ => Self::Host,
        }
    }
}

/// One line of a tenant's log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Position in this tenant's log, increasing from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The request that produced the line.
    pub request_id: String,
    /// Where the line came from.
    pub stream: LogStream,
    /// The text, without its trailing newline.
    pub message: String,
}

/// A line on its way to the archive.
#[derive(Debug)]
pub struct Archived {
    /// The tenant's id.
    pub tenant_id: Arc<str>,
    /// The line (shared with the tenant's in-memory log: nothing is copied).
    pub line: Arc<LogLine>,
    share: Arc<ArchiveShare>,
}

impl Archived {
    /// Marks the line as written (or given up on): its tenant's share frees a place.
    pub fn done(self) {
        if self.share.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.share.queue.queuing.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The host's archive queue, shared fairly: a tenant may hold at most
/// `capacity / (tenants with lines queued + 1)` places, so a chatty tenant
/// cannot crowd out another's lines.
#[derive(Debug)]
struct ArchiveQueue {
    capacity: usize,
    queuing: std::sync::atomic::AtomicUsize,
}

/// Where log lines go to be stored; cloned into every tenant's log.
#[derive(Debug, Clone)]
pub struct ArchiveSender {
    tx: tokio::sync::mpsc::Sender<Archived>,
    queue: Arc<ArchiveQueue>,
}

impl ArchiveSender {
    /// A queue of `capacity` lines, and its receiving end for the writer.
    pub fn channel(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<Archived>) {
        let capacity = capacity.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let queue = Arc::new(ArchiveQueue {
            capacity,
            queuing: Default::default(),
        });
        (Self { tx, queue }, rx)
    }

    /// The queue's depth and capacity for `/metrics`, read at scrape time.
    pub fn collector(&self) -> ArchiveCollector {
        ArchiveCollector {
            tx: self.tx.downgrade(),
        }
    }
}

/// `lodge_log_archive_queue` and `lodge_log_archive_queue_capacity`, read at
/// scrape time. It holds the queue weakly, so it never keeps the archive open.
#[derive(Debug)]
pub struct ArchiveCollector {
    tx: tokio::sync::mpsc::WeakSender<Archived>,
}

impl prometheus_client::collector::Collector for ArchiveCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let (queued, capacity) = self.tx.upgrade().map_or((0, 0), |tx| {
            let capacity = tx.max_capacity();
            (capacity.saturating_sub(tx.capacity()), capacity)
        });
        let e = &mut encoder;
        crate::metrics::gauge(
            e,
            "log_archive_queue",
            "Tenant log lines in the archive queue, waiting for the writer to take them",
            i64::try_from(queued).unwrap_or(i64::MAX),
        )?;
        crate::metrics::gauge(
            e,
            "log_archive_queue_capacity",
            "Lines the archive queue holds at most (log_archive_queue, 10 000 by default); each tenant may fill a fair share",
            i64::try_from(capacity).unwrap_or(i64::MAX),
        )
    }
}

/// One tenant's places in the archive queue.
#[derive(Debug)]
struct ArchiveShare {
    queue: Arc<ArchiveQueue>,
    queued: std::sync::atomic::AtomicUsize,
    /// Lines dropped since the last note in the tenant's log.
    unreported: AtomicU64,
    /// When that note was written (ms since the epoch).
    last_note_ms: AtomicU64,
}

/// How a tenant's log reaches the archive.
#[derive(Debug)]
struct ArchiveLink {
    tenant_id: Arc<str>,
    sender: ArchiveSender,
    share: Arc<ArchiveShare>,
    metrics: crate::metrics::TenantMetrics,
}

impl ArchiveLink {
    /// Queues `line` within the tenant's fair share (`within_share`, else
    /// wherever the queue has room: the host's own notes); false if it was dropped.
    fn send(&self, line: &Arc<LogLine>, within_share: bool) -> bool {
        let queue = &self.sender.queue;
        let fair = (queue.capacity / (queue.queuing.load(Ordering::Acquire) + 1)).max(1);
        if within_share && self.share.queued.load(Ordering::Acquire) >= fair {
            return false;
        }
        if self.share.queued.fetch_add(1, Ordering::AcqRel) == 0 {
            queue.queuing.fetch_add(1, Ordering::AcqRel);
        }
        let archived = Archived {
            tenant_id: self.tenant_id.clone(),
            line: line.clone(),
            share: self.share.clone(),
        };
        match self.sender.tx.try_send(archived) {
            Ok(()) => true,
            Err(e) => {
                e.into_inner().done();
                false
            }
        }
    }
}

/// The last N log lines of one tenant.
#[derive(Debug)]
pub struct TenantLogs {
    tenant: String,
    capacity: usize,
    next_seq: AtomicU64,
    lines: Mutex<VecDeque<Arc<LogLine>>>,
    /// Made on the first `subscribe`: most tenants are never followed, and a
    /// channel holds its whole buffer from the start.
    live: std::sync::OnceLock<broadcast::Sender<LogLine>>,
    archive: Option<ArchiveLink>,
    /// While the lines archived before a restart are not read back yet: the
    /// `seq` they all precede. Read on the first read of the log, not at start
    /// (a host with 100,000 tenants would hold every one's history).
    history: tokio::sync::Mutex<Option<u64>>,
}

impl TenantLogs {
    /// An empty log for `tenant` keeping at most `capacity` lines.
    pub fn new(tenant: impl Into<String>, capacity: usize) -> Self {
        Self {
            tenant: tenant.into(),
            capacity: capacity.max(1),
            next_seq: AtomicU64::new(1),
            // Grows with use: an idle tenant holds no buffer.
            lines: Mutex::new(VecDeque::new()),
            live: std::sync::OnceLock::new(),
            archive: None,
            history: tokio::sync::Mutex::new(None),
        }
    }

    /// A log that also sends every line to `archive` under `tenant_id`,
    /// continuing after line `last_seq` (the newest archived before a restart,
    /// read back by [`TenantLogs::merge_history`] when first wanted); lines the
    /// queue has no room for are counted in `metrics` and noted in the log.
    pub fn archived(
        tenant: impl Into<String>,
        capacity: usize,
        tenant_id: String,
        archive: ArchiveSender,
        last_seq: Option<u64>,
        metrics: crate::metrics::TenantMetrics,
    ) -> Self {
        let mut logs = Self::new(tenant, capacity);
        if let Some(last) = last_seq {
            logs.next_seq = AtomicU64::new(last + 1);
            logs.history = tokio::sync::Mutex::new(Some(last + 1));
        }
        logs.archive = Some(ArchiveLink {
            tenant_id: tenant_id.into(),
            share: Arc::new(ArchiveShare {
                queue: archive.queue.clone(),
                queued: Default::default(),
                unreported: AtomicU64::new(0),
                last_note_ms: AtomicU64::new(0),
            }),
            sender: archive,
            metrics,
        });
        logs
    }

    /// Appends a line, dropping the oldest when full, and emits it through `tracing`.
    pub fn push(&self, request_id: &str, stream: LogStream, message: String) {
        let now = self.push_line(request_id, stream, message);
        let Some(link) = &self.archive else { return };
        // Say so (at most once a second) when lines could not be archived.
        let last = link.share.last_note_ms.load(Ordering::Relaxed);
        if link.share.unreported.load(Ordering::Relaxed) > 0
            && now.saturating_sub(last) >= 1000
            && link
                .share
                .last_note_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = link.share.unreported.swap(0, Ordering::Relaxed);
            self.push_line_to(
                false,
                "",
                LogStream::Host,
                format!(
                    "{dropped} log line(s) were not archived: this app's share of the host's log \
                     archive queue was full (they were in the live log; see docs/operations.md)"
                ),
            );
        }
    }

    /// Appends one line within the tenant's share of the archive; returns its timestamp.
    fn push_line(&self, request_id: &str, stream: LogStream, message: String) -> u64 {
        self.push_line_to(true, request_id, stream, message)
    }

    fn push_line_to(
        &self,
        within_share: bool,
        request_id: &str,
        stream: LogStream,
        message: String,
    ) -> u64 {
        let line = Arc::new(LogLine {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            request_id: request_id.to_owned(),
            stream,
            message,
        });
        tracing::debug!(
            target: "lodge::guest",
            tenant = %self.tenant,
            request_id = %line.request_id,
            stream = ?line.stream,
            "{}",
            line.message
        );
        if let Some(live) = self.live.get() {
            let _ = live.send(LogLine::clone(&line));
        }
        if let Some(link) = &self.archive {
            // A full share drops the line from storage, never blocks the guest.
            if !link.send(&line, within_share) {
                link.share.unreported.fetch_add(1, Ordering::Relaxed);
                link.metrics.log_lines_dropped(1);
            }
        }
        let timestamp = line.timestamp_ms;
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
        timestamp
    }

    /// Reads back the lines archived before a restart, once, with `read` (given
    /// how many of the newest to read); until then the log holds only the lines
    /// since the restart. A failed read is tried again on the next call.
    pub async fn merge_history<E, F>(&self, read: impl FnOnce(usize) -> F) -> Result<(), E>
    where
        F: Future<Output = Result<Vec<LogLine>, E>>,
    {
        let mut pending = self.history.lock().await;
        let Some(before) = *pending else {
            return Ok(());
        };
        let history = read(self.capacity).await?;
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        // The archive may already hold lines pushed since the restart.
        let older = history.into_iter().filter(|l| l.seq < before);
        let mut merged: VecDeque<Arc<LogLine>> =
            older.map(Arc::new).chain(lines.drain(..)).collect();
        while merged.len() > self.capacity {
            merged.pop_front();
        }
        *lines = merged;
        *pending = None;
        Ok(())
    }

    /// Lines with `seq > since`, oldest first, at most `limit` of the newest.
    pub fn since(&self, since: u64, limit: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let matching: Vec<&Arc<LogLine>> = lines.iter().filter(|l| l.seq > since).collect();
        let skip = matching.len().saturating_sub(limit);
        matching
            .into_iter()
            .skip(skip)
            .map(|l| LogLine::clone(l))
            .collect()
    }

    /// All lines currently kept, oldest first.
    pub fn snapshot(&self) -> Vec<LogLine> {
        self.since(0, usize::MAX)
    }

    /// A receiver of every line pushed from now on (for `logs --follow`).
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live
            .get_or_init(|| broadcast::channel(256).0)
            .subscribe()
    }
}

/// The byte budget one request has for stdout and stderr together.
#[derive(Debug)]
pub struct RequestLogBudget {
    remaining: Mutex<usize>,
    truncated: std::sync::atomic::AtomicBool,
}

impl RequestLogBudget {
    /// A budget of `bytes` for one request.
    pub fn new(bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: Mutex::new(bytes),
            truncated: Default::default(),
        })
    }

    /// Takes up to `want` bytes; returns how many may be kept.
    fn take(&self, want: usize) -> usize {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let granted = want.min(*remaining);
        *remaining -= granted;
        granted
    }

    /// Marks the budget as exhausted; true the first time only.
    fn mark_truncated(&self) -> bool {
        !self.truncated.swap(true, Ordering::Relaxed)
    }
}

/// Guest stdout or stderr for one request, writing into the tenant's log.
///
/// Cloned freely: WASI asks for a fresh stream each time the guest calls
/// `get-stdout`; all clones share one line buffer, flushed when the last drops.
#[derive(Debug, Clone)]
pub struct LogSink {
    inner: Arc<Mutex<SinkState>>,
}

#[derive(Debug)]
struct SinkState {
    logs: Arc<TenantLogs>,
    request_id: Arc<str>,
    stream: LogStream,
    budget: Arc<RequestLogBudget>,
    partial: Vec<u8>,
}

impl LogSink {
    /// A sink for `stream` of request `request_id`, charged to `budget`.
    pub fn new(
        logs: Arc<TenantLogs>,
        request_id: Arc<str>,
        stream: LogStream,
        budget: Arc<RequestLogBudget>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SinkState {
                logs,
                request_id,
                stream,
                budget,
                partial: Vec::new(),
            })),
        }
    }

    /// Tags what is written from now on with request `request_id`, charged to
    /// `budget` (a kept instance serving its next request); a line the last
    /// request left unfinished is logged under that request first.
    pub fn retarget(&self, request_id: Arc<str>, budget: Arc<RequestLogBudget>) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        state.flush_partial();
        state.request_id = request_id;
        state.budget = budget;
    }

    /// Accepts all of `bytes` (the guest never sees a failure), keeping what fits.
    fn write_bytes(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = state.budget.take(bytes.len());
        state.append(&bytes[..kept]);
        if kept < bytes.len() && state.budget.mark_truncated() {
            state.flush_partial();
            let note = "log output truncated: this request reached its log limit".to_owned();
            state.logs.push(&state.request_id, LogStream::Host, note);
        }
    }
}

impl SinkState {
    fn append(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n') {
            self.extend_partial(&bytes[..pos]);
            self.flush_partial();
            bytes = &bytes[pos + 1..];
        }
        self.extend_partial(bytes);
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        let room = (MAX_LINE_BYTES + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let mut message = String::from_utf8_lossy(&self.partial).into_owned();
        if self.partial.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.partial.clear();
        let message = message
            .strip_suffix('\r')
            .map(str::to_owned)
            .unwrap_or(message);
        self.logs.push(&self.request_id, self.stream, message);
    }
}

impl Drop for SinkState {
    fn drop(&mut self) {
        self.flush_partial();
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(logs: &Arc<TenantLogs>, budget: usize) -> LogSink {
        LogSink::new(
            logs.clone(),
            Arc::from("req-1"),
            LogStream::Stdout,
            RequestLogBudget::new(budget),
        )
    }

    #[test]
    fn splits_lines_and_flushes_the_tail_on_drop() {
        let logs = Arc::new(TenantLogs::new("t", 10));
        let s = sink(&logs, 1024);
        s.write_bytes(b"one\ntw");
        s.write_bytes(b"o\r\nthree");
        assert_eq!(logs.snapshot().len(), 2);
        drop(s);
        let msgs: Vec<_> = logs.snapshot().into_iter().map(|l| l.message).collect();
        assert_eq!(msgs, ["one", "two", "three"]);
        assert!(logs.snapshot().iter().all(|l| l.request_id == "req-1"));
    }

    #[test]
    fn keeps_only_the_newest_lines() {
        let logs = Arc::new(TenantLogs::new("t", 3));
        let s = sink(&logs, 1 << 20);
        for i in 0..10 {
            s.write_bytes(format!("{i}\n").as_bytes());
        }
        let msgs: Vec<_> = logs.snapshot().into_iter().map(|l| l.message).collect();
        assert_eq!(msgs, ["7", "8", "9"]);
        assert_eq!(logs.since(8, 10).len(), 2);
        assert_eq!(logs.since(0, 1)[0].message, "9");
    }

    #[test]
    fn stops_at_the_request_budget_and_says_so_once() {
        let logs = Arc::new(TenantLogs::new("t", 100));
        let s = sink(&logs, 10);
        for _ in 0..1000 {
            s.write_bytes(b"0123456789abcdef\n");
        }
        drop(s);
        let lines = logs.snapshot();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].message, "0123456789");
        assert_eq!(lines[1].stream, LogStream::Host);
    }

    #[test]
    fn a_chatty_tenant_cannot_crowd_another_out_of_the_archive() {
        let (archive, mut rx) = ArchiveSender::channel(100);
        let log = |id: &str| {
            TenantLogs::archived(
                id,
                2000,
                id.to_owned(),
                archive.clone(),
                None,
                crate::metrics::TenantMetrics::default(),
            )
        };
        let (chatty, quiet) = (log("chatty"), log("quiet"));
        for i in 0..1000 {
            chatty.push("r", LogStream::Stdout, format!("{i}"));
        }
        for i in 0..10 {
            quiet.push("r", LogStream::Stdout, format!("{i}"));
        }
        let mut per_tenant = std::collections::HashMap::<String, usize>::new();
        while let Ok(archived) = rx.try_recv() {
            *per_tenant
                .entry(archived.tenant_id.to_string())
                .or_default() += 1;
            archived.done();
        }
        assert_eq!(
            per_tenant.get("chatty"),
            Some(&51),
            "half the queue (its fair share), and the host's note that the rest was dropped"
        );
        assert_eq!(
            per_tenant.get("quiet"),
            Some(&10),
            "every line of the quiet tenant"
        );
        // The drops are noted in the chatty tenant's own log.
        chatty.push("r", LogStream::Stdout, "again".into());
        assert!(
            chatty
                .snapshot()
                .iter()
                .any(|l| l.stream == LogStream::Host && l.message.contains("not archived")),
            "{:?}",
            chatty.snapshot()
        );
    }

    #[test]
    fn cuts_overlong_lines() {
        let logs = Arc::new(TenantLogs::new("t", 10));
        let s = sink(&logs, 1 << 20);
        s.write_bytes(&vec![b'x'; MAX_LINE_BYTES * 3]);
        s.write_bytes(b"\n");
        let line = &logs.snapshot()[0].message;
        assert!(line.ends_with('…'));
        assert_eq!(line.len(), MAX_LINE_BYTES + '…'.len_utf8());
    }
}
