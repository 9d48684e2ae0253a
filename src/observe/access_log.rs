//! The access log: one line per request, as text (`key=value` pairs) or JSON, to stdout or a
//! file.
//!
//! Writing never makes a request wait. The request path copies what it needs into an
//! [`AccessRecord`] and offers it to a bounded channel ([`CHANNEL_CAPACITY`] records); a writer
//! task formats the records and writes them through a buffer. When the writer falls behind
//! (a slow disk, a blocked stdout pipe) and the channel is full, the record is dropped and
//! counted in `graygate_access_log_dropped_total` instead.
//!
//! The buffer is flushed at most once per [`FLUSH_INTERVAL`] and when graygate stops
//! ([`AccessLogWriter::finish`]): the first line after a quiet second is written at once, lines
//! under load are batched, and none waits longer than about a second.
//!
//! # Fields
//! In this order in both formats: `time` (RFC 3339 UTC with milliseconds, when the response was
//! done), `client_ip` (the resolved one, trusted proxies applied), `method`, `path` (the request
//! target: path and query), `route`, `service`, `version` (the one that answered), `reason` (of
//! the decision), `upstream`, `server`, `status`, `bytes_sent` (response body bytes),
//! `duration_ms` (whole request), `upstream_ms` (until the upstream's response headers),
//! `fell_back`. A value that does not apply (no route: no version) is `null` in JSON and `-` in
//! text.
//!
//! # Reopening the file (log rotation)
//! logrotate moves the file away and asks graygate to open its path again (SIGUSR1, through
//! [`AccessLogReopener`]). The writer task then writes the records already queued to the file it
//! has open, flushes, and opens the path anew: every line is in exactly one of the two files, and
//! none goes to the old one once the reopen is done. A path that cannot be opened again (its
//! directory gone, no permission) is an error for the caller to log; the writer keeps the file it
//! had, so that lines are kept rather than lost.

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Uri};
use prometheus::IntCounter;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::policy::Reason;
use crate::proxy::RequestRecord;

/// Records the channel holds while the writer is busy; past it, records are dropped. 8192
/// records is a few MB, seconds of logging at a high request rate.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Longest time a written line waits in the buffer; also the shortest time between two
/// flushes, so that a busy log costs one write call per second (or per buffer full).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Size of the write buffer: one write call per this many bytes under load.
const BUFFER_BYTES: usize = 64 * 1024;

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// No access log (the default): no channel, no task, nothing per request.
    #[default]
    Off,
    /// One line of space-separated `key=value` pairs.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    /// Standard output (`path = "-"`, the default).
    #[default]
    Stdout,
    /// This file, appended to (created if missing).
    File(PathBuf),
}

/// One request, owned, on its way to the writer task.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRecord {
    /// When the response was done.
    pub time: SystemTime,
    /// The resolved client IP.
    pub client_ip: IpAddr,
    pub method: Method,
    /// The request target; its path and query are logged.
    pub uri: Uri,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// The version that answered (stable after a fallback).
    pub version: Option<Arc<str>>,
    /// Why the policy chose the version, typed: formatted (`rule:<name>`,
    /// `split:sticky:<bucket>`, ...) by the writer task, not on the request path.
    pub reason: Option<Reason>,
    pub upstream: Option<String>,
    /// `host:port` of the server that answered.
    pub server: Option<String>,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// The whole request.
    pub duration: Duration,
    /// Until the upstream's response headers.
    pub upstream_headers: Option<Duration>,
    /// The chosen version could not be reached; stable answered.
    pub fell_back: bool,
}

impl AccessRecord {
    /// Copies what the log needs out of the proxy's record. The route, service, version and
    /// reason are shared (`Arc` clones), the rest is short strings.
    pub fn from_request(r: &RequestRecord<'_>, time: SystemTime) -> AccessRecord {
        let choice = r.choice;
        AccessRecord {
            time,
            client_ip: r.client_ip,
            method: r.method.clone(),
            uri: r.uri.clone(),
            route: choice.map(|c| c.names.route.clone()),
            service: choice.map(|c| c.names.service.clone()),
            version: choice.map(|c| c.answered_by(r.fell_back).clone()),
            reason: choice.map(|c| c.reason.clone()),
            upstream: r.upstream.map(str::to_string),
            server: r.server.map(str::to_string),
            status: r.status.as_u16(),
            bytes_sent: r.bytes_sent,
            duration: r.total,
            upstream_headers: r.upstream_headers,
            fell_back: r.fell_back,
        }
    }

    /// The request target as logged: path and query, `*` for `OPTIONS *`.
    fn path(&self) -> &str {
        self.uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |p| p.as_str())
    }

    /// Appends the record as one JSON line.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            client_ip: IpAddr,
            method: &'a str,
            path: &'a str,
            route: Option<&'a str>,
            service: Option<&'a str>,
            version: Option<&'a str>,
            reason: Option<&'a str>,
            upstream: Option<&'a str>,
            server: Option<&'a str>,
            status: u16,
            bytes_sent: u64,
            duration_ms: f64,
            upstream_ms: Option<f64>,
            fell_back: bool,
        }
        let reason = self.reason.as_ref().map(Reason::to_string);
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            client_ip: self.client_ip,
            method: self.method.as_str(),
            path: self.path(),
            route: self.route.as_deref(),
            service: self.service.as_deref(),
            version: self.version.as_deref(),
            reason: reason.as_deref(),
            upstream: self.upstream.as_deref(),
            server: self.server.as_deref(),
            status: self.status,
            bytes_sent: self.bytes_sent,
            duration_ms: millis(self.duration),
            upstream_ms: self.upstream_headers.map(millis),
            fell_back: self.fell_back,
        };
        serde_json::to_writer(&mut *out, &line).expect("a record always serializes");
        out.push(b'\n');
    }

    /// Appends the record as one text line: space-separated `key=value`, values quoted when they
    /// hold a space, a quote, `=` or a control character, `-` when absent.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "time={} client_ip={} method=",
            humantime::format_rfc3339_millis(self.time),
            self.client_ip
        );
        push_value(&mut line, Some(self.method.as_str()));
        let reason = self.reason.as_ref().map(Reason::to_string);
        let fields = [
            (" path=", Some(self.path())),
            (" route=", self.route.as_deref()),
            (" service=", self.service.as_deref()),
            (" version=", self.version.as_deref()),
            (" reason=", reason.as_deref()),
            (" upstream=", self.upstream.as_deref()),
            (" server=", self.server.as_deref()),
        ];
        for (key, value) in fields {
            line.push_str(key);
            push_value(&mut line, value);
        }
        let _ = write!(
            line,
            " status={} bytes_sent={} duration_ms={} upstream_ms=",
            self.status,
            self.bytes_sent,
            millis(self.duration)
        );
        match self.upstream_headers {
            Some(d) => {
                let _ = write!(line, "{}", millis(d));
            }
            None => line.push('-'),
        }
        let _ = writeln!(line, " fell_back={}", self.fell_back);
        out.extend_from_slice(line.as_bytes());
    }

    fn write(&self, format: AccessLogFormat, out: &mut Vec<u8>) {
        match format {
            AccessLogFormat::Json => self.write_json(out),
            AccessLogFormat::Text => self.write_text(out),
            AccessLogFormat::Off => {}
        }
    }
}

/// Milliseconds with microsecond precision: `1.234`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A text value: bare when it is safe, else quoted with `"` and `\` escaped; `-` when absent or
/// empty (an empty value would read as a missing one anyway).
fn push_value(line: &mut String, value: Option<&str>) {
    let value = match value {
        Some(v) if !v.is_empty() => v,
        _ => {
            line.push('-');
            return;
        }
    };
    let bare = value
        .chars()
        .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\\' | '='));
    if bare {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// The request path's end of the access log: hands records to the writer task, never waits.
pub struct AccessLog {
    records: mpsc::Sender<AccessRecord>,
    /// `graygate_access_log_dropped_total`.
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens `target` and starts the writer task. Returns the request path's end and the handle
    /// that flushes and stops the writer. `format` must not be [`AccessLogFormat::Off`] (there
    /// is nothing to start then). Dropped records are counted in `dropped` (the metric, see
    /// [`crate::observe::Metrics::access_log_dropped`]), or in a counter of their own when
    /// metrics are off.
    pub async fn start(
        format: AccessLogFormat,
        target: &AccessLogTarget,
        dropped: Option<IntCounter>,
    ) -> io::Result<(AccessLog, AccessLogWriter)> {
        let dropped = match dropped {
            Some(counter) => counter,
            None => IntCounter::new(
                "graygate_access_log_dropped_total",
                "Access log records dropped because the writer fell behind.",
            )
            .map_err(io::Error::other)?,
        };
        let (out, path): (Output, _) = match target {
            AccessLogTarget::Stdout => (Box::new(tokio::io::stdout()), None),
            AccessLogTarget::File(path) => (Box::new(open(path).await?), Some(path.clone())),
        };
        let (log, records) = AccessLog::channel(CHANNEL_CAPACITY, dropped);
        let (stop, stopped) = oneshot::channel();
        let (reopen, reopens) = mpsc::channel(1);
        let task = tokio::spawn(write_records(
            Channels {
                records,
                reopens,
                stop: stopped,
            },
            format,
            BufWriter::with_capacity(BUFFER_BYTES, out),
            path.clone(),
        ));
        Ok((
            log,
            AccessLogWriter {
                stop: Some(stop),
                task,
                reopener: AccessLogReopener {
                    requests: reopen,
                    path,
                },
            },
        ))
    }

    /// The request path's end of a channel of `capacity` records, and the writer's end.
    fn channel(capacity: usize, dropped: IntCounter) -> (AccessLog, mpsc::Receiver<AccessRecord>) {
        let (records, receiver) = mpsc::channel(capacity);
        (AccessLog { records, dropped }, receiver)
    }

    /// Offers one request to the writer; drops (and counts) it when the writer is behind.
    pub fn record(&self, r: &RequestRecord<'_>) {
        self.send(AccessRecord::from_request(r, SystemTime::now()));
    }

    fn send(&self, record: AccessRecord) {
        if self.records.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

/// Where the writer writes: stdout or the file.
type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens the access log file for appending, creating it if missing.
async fn open(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// The writer task's handle: [`AccessLogWriter::finish`] writes what is queued, flushes and
/// stops it.
pub struct AccessLogWriter {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Handed out to whoever reopens the file on a signal ([`AccessLogWriter::reopener`]).
    reopener: AccessLogReopener,
}

impl AccessLogWriter {
    /// What asks this writer to open its file again (log rotation).
    pub fn reopener(&self) -> AccessLogReopener {
        self.reopener.clone()
    }

    /// Writes the records already queued, flushes, and returns when the writer has stopped.
    /// Records offered after this are dropped.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(error = %e, "access log writer failed");
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        // Not finished (start failed further on): stop the task rather than leak it.
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Why the access log file could not be opened again.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    /// The path cannot be opened (its directory is gone, no permission): the lines still go to
    /// the file the writer had open, renamed or not, until a reopen succeeds.
    #[error(
        "cannot reopen the access log {path}: {source}; lines still go to the file it had open"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// graygate is stopping: the writer has finished.
    #[error("the access log writer has stopped")]
    Stopped,
}

/// What the file was reopened as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopened {
    /// This path, opened again: the lines from now on go to it.
    File(PathBuf),
    /// The access log goes to stdout: there is no file to reopen (what was queued is flushed).
    Stdout,
}

/// Asks the writer task to write what is queued to its file, flush it and open the path again:
/// after `mv access.log access.log.1`, the next lines go to a new `access.log`. Cheap to clone.
#[derive(Clone)]
pub struct AccessLogReopener {
    /// One request at a time: each carries where the writer says how it went.
    requests: mpsc::Sender<oneshot::Sender<Result<Reopened, ReopenError>>>,
    /// The file, for the error when the writer has gone; `None` for stdout.
    path: Option<PathBuf>,
}

impl AccessLogReopener {
    /// Reopens the file and returns once the writer has switched to it: every record offered
    /// before the call is in the old file, every record offered after it returns is in the new
    /// one. On error the writer keeps writing to the file it had.
    pub async fn reopen(&self) -> Result<Reopened, ReopenError> {
        let (done, outcome) = oneshot::channel();
        if self.requests.send(done).await.is_err() {
            return Err(ReopenError::Stopped);
        }
        outcome.await.unwrap_or(Err(ReopenError::Stopped))
    }

    /// The file reopened, `None` when the log goes to stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// What the writer task listens to besides the clock.
struct Channels {
    /// The records from the request path.
    records: mpsc::Receiver<AccessRecord>,
    /// Requests to reopen the file ([`AccessLogReopener`]).
    reopens: mpsc::Receiver<oneshot::Sender<Result<Reopened, ReopenError>>>,
    /// [`AccessLogWriter::finish`].
    stop: oneshot::Receiver<()>,
}

/// The writer task: formats records into the buffer, flushes every [`FLUSH_INTERVAL`], reopens
/// `path` when asked, and at the end (stop, or every sender gone) writes what is queued and
/// flushes.
async fn write_records(
    channels: Channels,
    format: AccessLogFormat,
    mut out: BufWriter<Output>,
    path: Option<PathBuf>,
) {
    let Channels {
        mut records,
        mut reopens,
        mut stop,
    } = channels;
    let mut line = Vec::with_capacity(512);
    let mut failing = false;
    let mut unflushed = false;
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            record = records.recv() => match record {
                Some(record) => {
                    line.clear();
                    record.write(format, &mut line);
                    let written = out.write_all(&line).await;
                    report(&mut failing, written);
                    unflushed = true;
                }
                None => break,
            },
            _ = tick.tick(), if unflushed => {
                let flushed = out.flush().await;
                report(&mut failing, flushed);
                unflushed = false;
            }
            Some(done) = reopens.recv() => {
                // What was offered before the reopen belongs to the old file: at most a
                // channel's worth, so that a steady stream of records cannot hold the reopen off.
                for _ in 0..CHANNEL_CAPACITY {
                    let Ok(record) = records.try_recv() else {
                        break;
                    };
                    line.clear();
                    record.write(format, &mut line);
                    let written = out.write_all(&line).await;
                    report(&mut failing, written);
                }
                let flushed = out.flush().await;
                report(&mut failing, flushed);
                unflushed = false;
                let outcome = reopen(&mut out, path.as_deref()).await;
                // The caller may have gone (a signal handler stopped): the file is reopened
                // either way.
                let _ = done.send(outcome);
            }
            _ = &mut stop => {
                records.close();
                while let Ok(record) = records.try_recv() {
                    line.clear();
                    record.write(format, &mut line);
                    let written = out.write_all(&line).await;
                    report(&mut failing, written);
                }
                break;
            }
        }
    }
    let flushed = out.flush().await;
    report(&mut failing, flushed);
}

/// Swaps the flushed `out` for the path opened again; keeps it when the path cannot be opened.
async fn reopen(out: &mut BufWriter<Output>, path: Option<&Path>) -> Result<Reopened, ReopenError> {
    let Some(path) = path else {
        return Ok(Reopened::Stdout);
    };
    let file = open(path).await.map_err(|source| ReopenError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // The buffer is empty (flushed just before): nothing of the old file's goes to the new one.
    *out.get_mut() = Box::new(file);
    Ok(Reopened::File(path.to_path_buf()))
}

/// Logs a write error once per failing spell, not once per line.
fn report(failing: &mut bool, result: io::Result<()>) {
    match result {
        Ok(()) => {
            if *failing {
                tracing::info!("access log writes succeed again");
            }
            *failing = false;
        }
        Err(e) => {
            if !*failing {
                tracing::warn!(error = %e, "access log write failed; lines are lost until writes succeed again");
            }
            *failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessRecord {
        AccessRecord {
            // 2024-05-06T07:08:09.123Z
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_979_289_123),
            client_ip: "10.0.0.7".parse().unwrap(),
            method: Method::GET,
            uri: Uri::from_static("/api/x?ab=b"),
            route: Some("web".into()),
            service: Some("web".into()),
            version: Some("canary".into()),
            reason: Some(Reason::Rule {
                name: "gray ips".into(),
            }),
            upstream: Some("canary".into()),
            server: Some("127.0.0.1:9001".into()),
            status: 200,
            bytes_sent: 7,
            duration: Duration::from_micros(1234),
            upstream_headers: Some(Duration::from_micros(900)),
            fell_back: false,
        }
    }

    fn no_route() -> AccessRecord {
        AccessRecord {
            route: None,
            service: None,
            version: None,
            reason: None,
            upstream: None,
            server: None,
            status: 404,
            bytes_sent: 19,
            upstream_headers: None,
            uri: Uri::from_static("/nowhere"),
            ..sample()
        }
    }

    fn text(r: &AccessRecord) -> String {
        let mut out = Vec::new();
        r.write_text(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn json(r: &AccessRecord) -> serde_json::Value {
        let mut out = Vec::new();
        r.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn text_line_has_every_field_in_order() {
        assert_eq!(
            text(&sample()),
            "time=2024-05-06T07:08:09.123Z client_ip=10.0.0.7 method=GET path=\"/api/x?ab=b\" \
             route=web service=web version=canary reason=\"rule:gray ips\" upstream=canary \
             server=127.0.0.1:9001 status=200 bytes_sent=7 duration_ms=1.234 upstream_ms=0.9 \
             fell_back=false\n"
        );
        assert_eq!(
            text(&no_route()),
            "time=2024-05-06T07:08:09.123Z client_ip=10.0.0.7 method=GET path=/nowhere \
             route=- service=- version=- reason=- upstream=- server=- status=404 bytes_sent=19 \
             duration_ms=1.234 upstream_ms=- fell_back=false\n"
        );
    }

    #[test]
    fn text_values_are_quoted_and_escaped_when_needed() {
        let mut line = String::new();
        for v in [
            "plain",
            "a b",
            "say \"hi\"",
            "back\\slash",
            "k=v",
            "nl\n",
            "bell\u{7}",
            "",
        ] {
            push_value(&mut line, Some(v));
            line.push('|');
        }
        push_value(&mut line, None);
        assert_eq!(
            line,
            "plain|\"a b\"|\"say \\\"hi\\\"\"|\"back\\\\slash\"|\"k=v\"|\"nl\\n\"|\"bell\\u{7}\"|-|-"
        );
    }

    #[test]
    fn json_line_has_every_field() {
        let v = json(&sample());
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2024-05-06T07:08:09.123Z",
                "client_ip": "10.0.0.7",
                "method": "GET",
                "path": "/api/x?ab=b",
                "route": "web",
                "service": "web",
                "version": "canary",
                "reason": "rule:gray ips",
                "upstream": "canary",
                "server": "127.0.0.1:9001",
                "status": 200,
                "bytes_sent": 7,
                "duration_ms": 1.234,
                "upstream_ms": 0.9,
                "fell_back": false,
            })
        );
        let v = json(&no_route());
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["status"], 404);
    }

    /// Every kind of reason is written as the policy names it, in both formats.
    #[test]
    fn reasons_are_written_as_the_policy_names_them() {
        use crate::policy::OverrideValue;
        let cases = [
            (
                Reason::Override {
                    value: OverrideValue::Always,
                },
                "override:always",
            ),
            (
                Reason::Override {
                    value: OverrideValue::Never,
                },
                "override:never",
            ),
            (
                Reason::Rule {
                    name: "beta".into(),
                },
                "rule:beta",
            ),
            (
                Reason::Split {
                    bucket: 1234,
                    sticky: true,
                },
                "split:sticky:1234",
            ),
            (
                Reason::Split {
                    bucket: 9,
                    sticky: false,
                },
                "split:random:9",
            ),
            (Reason::Default, "default"),
        ];
        for (reason, written) in cases {
            let r = AccessRecord {
                reason: Some(reason),
                ..sample()
            };
            assert_eq!(json(&r)["reason"], written);
            assert!(
                text(&r).contains(&format!(" reason={written} ")),
                "{}",
                text(&r)
            );
        }
    }

    #[test]
    fn json_escapes_what_the_client_sent() {
        let mut r = sample();
        r.uri = Uri::from_static("/a%22b?q=%0A");
        r.reason = Some(Reason::Rule {
            name: "\"quoted\"\n".into(),
        });
        let v = json(&r);
        assert_eq!(v["path"], "/a%22b?q=%0A");
        assert_eq!(v["reason"], "rule:\"quoted\"\n");
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (log, mut receiver) = AccessLog::channel(2, dropped.clone());
        for _ in 0..5 {
            log.send(sample());
        }
        assert_eq!(dropped.get(), 3);
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err());
        // Room again: the next record goes through.
        log.send(sample());
        assert_eq!(dropped.get(), 3);
        assert!(receiver.try_recv().is_ok());
    }

    #[tokio::test]
    async fn finish_writes_queued_records_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (log, writer) = AccessLog::start(
            AccessLogFormat::Json,
            &AccessLogTarget::File(path.clone()),
            Some(dropped.clone()),
        )
        .await
        .unwrap();
        for _ in 0..3 {
            log.send(sample());
        }
        writer.finish().await;
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().count(), 3, "{written}");
        for line in written.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["version"], "canary");
        }
        // The writer is gone: a late record is dropped and counted, not queued forever.
        log.send(sample());
        assert_eq!(dropped.get(), 1);
    }

    /// A JSON access log in a temporary directory: the log, its writer, the file's path.
    async fn file_log(dir: &tempfile::TempDir) -> (AccessLog, AccessLogWriter, PathBuf) {
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (log, writer) = AccessLog::start(
            AccessLogFormat::Json,
            &AccessLogTarget::File(path.clone()),
            Some(dropped),
        )
        .await
        .unwrap();
        (log, writer, path)
    }

    /// The `path` of every line of `file`, in order.
    fn paths_in(file: &Path) -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["path"].as_str().unwrap().to_string()
            })
            .collect()
    }

    /// A record for request number `n` (its path says which).
    fn numbered(n: usize) -> AccessRecord {
        AccessRecord {
            uri: format!("/r/{n}").parse().unwrap(),
            ..sample()
        }
    }

    fn numbers(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|n| format!("/r/{n}")).collect()
    }

    /// logrotate's `create` mode: the file is renamed, then reopened. What was offered before
    /// the reopen is in the renamed file, what came after in the new one, each line once.
    #[tokio::test]
    async fn a_reopen_after_a_rename_writes_the_next_lines_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer, path) = file_log(&dir).await;
        let reopener = writer.reopener();
        assert_eq!(reopener.path(), Some(path.as_path()));
        for n in 0..3 {
            log.send(numbered(n));
        }
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        assert_eq!(
            reopener.reopen().await.unwrap(),
            Reopened::File(path.clone())
        );
        // Flushed by the reopen: the old file is complete before anything else is written.
        assert_eq!(paths_in(&rotated), numbers(0..3));
        assert_eq!(paths_in(&path), Vec::<String>::new());
        for n in 3..5 {
            log.send(numbered(n));
        }
        writer.finish().await;
        assert_eq!(paths_in(&rotated), numbers(0..3));
        assert_eq!(paths_in(&path), numbers(3..5));
    }

    /// A path that cannot be opened again: the error names it, and the lines go on to the file
    /// that was open (none lost); a later reopen that can open it switches.
    #[tokio::test]
    async fn a_path_that_cannot_be_reopened_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer, path) = file_log(&dir).await;
        let reopener = writer.reopener();
        log.send(numbered(0));
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        // A directory where the file was: it cannot be opened for appending, even by root.
        std::fs::create_dir(&path).unwrap();
        let e = reopener.reopen().await.unwrap_err();
        assert!(matches!(e, ReopenError::Open { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reopen the access log {}: Is a directory (os error 21); lines still go \
                 to the file it had open",
                path.display()
            )
        );
        log.send(numbered(1));
        std::fs::remove_dir(&path).unwrap();
        assert_eq!(
            reopener.reopen().await.unwrap(),
            Reopened::File(path.clone())
        );
        log.send(numbered(2));
        writer.finish().await;
        assert_eq!(paths_in(&rotated), numbers(0..2));
        assert_eq!(paths_in(&path), numbers(2..3));
    }

    /// Records offered while the reopen runs land in one file or the other, never both, never
    /// lost: every number is written exactly once across the rotated files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_offered_during_reopens_are_each_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer, path) = file_log(&dir).await;
        let reopener = writer.reopener();
        const RECORDS: usize = 2000;
        let sender = std::thread::spawn(move || {
            for n in 0..RECORDS {
                // A full channel would drop records; wait for room instead (the test counts
                // every one).
                while log.records.try_send(numbered(n)).is_err() {
                    std::thread::yield_now();
                }
            }
            log
        });
        let mut files = Vec::new();
        for i in 0..5 {
            let rotated = dir.path().join(format!("access.log.{i}"));
            std::fs::rename(&path, &rotated).unwrap();
            reopener.reopen().await.unwrap();
            files.push(rotated);
        }
        let log = sender.join().unwrap();
        writer.finish().await;
        drop(log);
        files.push(path);
        let written: Vec<String> = files.iter().flat_map(|f| paths_in(f)).collect();
        // Each once, in order within and across the files: each file holds what came before the
        // next one.
        assert_eq!(written, numbers(0..RECORDS));
    }

    #[tokio::test]
    async fn stdout_has_nothing_to_reopen_and_a_finished_writer_says_it_stopped() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let (_log, writer) = AccessLog::start(
            AccessLogFormat::Text,
            &AccessLogTarget::Stdout,
            Some(dropped),
        )
        .await
        .unwrap();
        let reopener = writer.reopener();
        assert_eq!(reopener.path(), None);
        assert_eq!(reopener.reopen().await.unwrap(), Reopened::Stdout);
        writer.finish().await;
        let e = reopener.reopen().await.unwrap_err();
        assert_eq!(e.to_string(), "the access log writer has stopped");
    }
}
