//! Traffic mirroring (shadow traffic): copies of a share of a service's requests sent to one of
//! its versions, fire and forget, with an optional comparison of the two answers.
//!
//! The client's response never waits for a copy and is never changed by one. Mirrors in other
//! proxies either hold the client's connection until the copy is answered (the next request on
//! it waits) or silently drop bodies above a fixed size; here:
//! - the copy is a spawned task with its own request (method, URI, the rewritten headers plus
//!   [`MIRROR_HEADER`] and the version header naming the mirror version), so the primary request
//!   goes on at once;
//! - the request body reaches the primary as it streams; a copy of it is kept on the way, up
//!   to `max_body` ([`TeeBody`]). A body known to be larger is not copied at all, one that grows
//!   past the limit is dropped: either way the copy is skipped with reason `body`, never cut;
//! - at most `max_in_flight` copies per service run at once ([`InFlight`]): past it a request is
//!   not copied (reason `in_flight`) rather than queued, and each copy is bounded by the mirror's
//!   `timeout` (reason `timeout`), so a mirror that hangs costs a bounded number of tasks and
//!   connections and no latency;
//! - with `compare`, the primary's response body is hashed as it passes to the client
//!   ([`HashingBody`]: no frame waits for anything), and the task compares status and hash with the
//!   mirror's answer once both are done (bodies above `max_body` are not compared); the last
//!   [`MISMATCHES_KEPT`] mismatches are kept for the admin API, and a few a minute are logged.
//!
//! What happens is told to the [`Observer`] as [`MirrorRecord`]s (metrics).
//!
//! The settings come from the policy ([`crate::policy::mirror::Mirror`]), through the
//! [`super::Router`] ([`super::Router::mirror`]): a lookup by the decided service, nothing
//! allocated for requests that are not copied.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tracing::warn;
use xxhash_rust::xxh3::Xxh3;

use super::forward;
use super::upstream::{Activity, LiveUpstreams, SendOptions};
use super::{BoxError, Observer, ProxyBody};
use crate::policy::mirror::Mirror;

/// Header every copy carries, so that the mirror version can tell copies from real traffic
/// (and, say, not write).
pub const MIRROR_HEADER: &str = "x-graygate-mirror";

/// Mismatches logged per minute at most (all are counted).
const MISMATCH_LOGS_PER_MINUTE: u64 = 10;

/// A service's mirror as the data plane holds it: the policy's settings and the count of copies
/// in flight.
#[derive(Debug)]
pub struct MirrorTarget {
    pub mirror: Mirror,
    /// Shared with the target of the same service and version in the table a policy change
    /// replaces, so that a change does not reset the cap under copies still in flight.
    in_flight: Arc<InFlight>,
    /// The last mismatches found by the comparison, kept across policy changes likewise.
    mismatches: Arc<Mismatches>,
}

impl MirrorTarget {
    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.now()
    }

    /// The last [`MISMATCHES_KEPT`] mismatches, oldest first.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        self.mismatches.snapshot()
    }
}

/// How many mismatches each mirror keeps for the admin API.
pub const MISMATCHES_KEPT: usize = 20;

/// One mismatch of the comparison, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub at: std::time::SystemTime,
    /// The request's path (without the query: it may carry secrets).
    pub path: String,
    pub primary_status: u16,
    pub mirror_status: u16,
    /// True when both bodies hashed the same (only the statuses differ).
    pub same_body: bool,
}

/// A ring of the last [`MISMATCHES_KEPT`] mismatches.
#[derive(Debug, Default)]
struct Mismatches(std::sync::Mutex<std::collections::VecDeque<Mismatch>>);

impl Mismatches {
    fn push(&self, mismatch: Mismatch) {
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == MISMATCHES_KEPT {
            ring.pop_front();
        }
        ring.push_back(mismatch);
    }

    fn snapshot(&self) -> Vec<Mismatch> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

/// The mirrors of the running policy, by service.
#[derive(Debug, Default)]
pub struct MirrorTable {
    targets: Vec<Arc<MirrorTarget>>,
}

impl MirrorTable {
    /// The table of `mirrors`, keeping the in-flight counts of `previous` for the same service
    /// and version.
    pub fn build(mirrors: Vec<Mirror>, previous: &MirrorTable) -> MirrorTable {
        let targets = mirrors
            .into_iter()
            .map(|mirror| {
                let same = previous.targets.iter().find(|t| {
                    t.mirror.service == mirror.service && t.mirror.version == mirror.version
                });
                Arc::new(MirrorTarget {
                    mirror,
                    in_flight: same.map_or_else(Default::default, |t| t.in_flight.clone()),
                    mismatches: same.map_or_else(Default::default, |t| t.mismatches.clone()),
                })
            })
            .collect();
        MirrorTable { targets }
    }

    /// The mirror of `service`, if it has one. A walk over the few mirrored services; none at
    /// all costs one length check.
    pub fn get(&self, service: &str) -> Option<&Arc<MirrorTarget>> {
        self.targets.iter().find(|t| &*t.mirror.service == service)
    }
}

/// Copies in flight of one mirror, with their cap taken at each acquire.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Takes a place if fewer than `cap` are taken.
    pub fn try_acquire(&self, cap: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back.
    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a request was not copied, or its copy not answered: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `max_in_flight` copies were running.
    InFlight,
    /// The body was larger than `max_body` (or the client's body broke off).
    Body,
    /// The method is not in `methods`.
    Method,
    /// The copy could not be sent or its answer read.
    Error,
    /// No answer within `timeout`.
    Timeout,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::InFlight => "in_flight",
            SkipReason::Body => "body",
            SkipReason::Method => "method",
            SkipReason::Error => "error",
            SkipReason::Timeout => "timeout",
        }
    }
}

/// What a comparison of the two answers found: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Match,
    Mismatch,
    /// A body above `max_body`, or the primary's response abandoned before its end.
    NotCompared,
}

impl Comparison {
    pub fn label(self) -> &'static str {
        match self {
            Comparison::Match => "match",
            Comparison::Mismatch => "mismatch",
            Comparison::NotCompared => "not_compared",
        }
    }
}

/// One thing that happened to a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorEvent {
    /// A request of the service was drawn (`true`: it is to be copied) or not.
    Decided { mirrored: bool },
    /// A request drawn was not copied, or its copy gave up.
    Skipped(SkipReason),
    /// A copy took a place under `max_in_flight`.
    Started,
    /// The mirror answered a copy, after `latency` (to its response headers).
    Answered {
        status: StatusCode,
        latency: Duration,
    },
    /// A copy gave its place back (told after `Started`, exactly once, however the copy ended).
    Ended,
    /// The two answers were compared.
    Compared(Comparison),
}

/// What the observer is told about a mirror.
#[derive(Debug)]
pub struct MirrorRecord<'a> {
    pub service: &'a str,
    /// The mirror version.
    pub version: &'a str,
    pub event: MirrorEvent,
}

fn tell(observer: &Option<Arc<dyn Observer>>, mirror: &Mirror, event: MirrorEvent) {
    if let Some(observer) = observer {
        observer.on_mirror(&MirrorRecord {
            service: &mirror.service,
            version: &mirror.version,
            event,
        });
    }
}

/// A place under `max_in_flight`, given back (and told) when dropped, however the copy ends.
struct Place {
    target: Arc<MirrorTarget>,
    observer: Option<Arc<dyn Observer>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        // Told before the place is free, so that a gauge fed by these events never shows more
        // than the cap.
        tell(&self.observer, &self.target.mirror, MirrorEvent::Ended);
        self.target.in_flight.release();
    }
}

/// The primary's answer, for the comparison: its status and the hash of its body (`None`: above
/// `max_body`).
#[derive(Debug, Clone, Copy)]
struct PrimaryAnswer {
    status: StatusCode,
    hash: Option<u64>,
}

/// A copy on its way: made by [`begin`], it hooks into the primary's request body
/// ([`Copying::tee`]) and response ([`Copying::watch_response`]).
pub struct Copying {
    /// Where the copy of the request body goes, when there is one to keep.
    body: Option<oneshot::Sender<Result<Bytes, SkipReason>>>,
    max_body: u64,
    /// Where the primary's answer goes, with `compare`.
    primary: Option<oneshot::Sender<PrimaryAnswer>>,
}

/// Decides whether this request is copied (`random` is a number drawn for it alone) and, if it
/// is, spawns the copy's task, which waits for the body (if any) and sends the copy. `request` is
/// the primary request as it goes upstream (headers rewritten), before its body is wrapped.
pub fn begin<B: Body>(
    target: &Arc<MirrorTarget>,
    random: u64,
    request: &Request<B>,
    version_header: Option<&HeaderName>,
    observer: &Option<Arc<dyn Observer>>,
    upstreams: &Arc<LiveUpstreams>,
) -> Option<Copying> {
    let mirror = &target.mirror;
    let drawn = mirror.draws(random);
    tell(observer, mirror, MirrorEvent::Decided { mirrored: drawn });
    if !drawn {
        return None;
    }
    if !mirror.copies(request.method()) {
        tell(observer, mirror, MirrorEvent::Skipped(SkipReason::Method));
        return None;
    }
    let body = request.body();
    let bodiless = body.is_end_stream();
    if !bodiless && body.size_hint().lower() > mirror.max_body {
        tell(observer, mirror, MirrorEvent::Skipped(SkipReason::Body));
        return None;
    }
    if !target.in_flight.try_acquire(mirror.max_in_flight) {
        tell(observer, mirror, MirrorEvent::Skipped(SkipReason::InFlight));
        return None;
    }
    let place = Place {
        target: target.clone(),
        observer: observer.clone(),
    };
    tell(observer, mirror, MirrorEvent::Started);

    let mut headers = request.headers().clone();
    headers.insert(
        HeaderName::from_static(MIRROR_HEADER),
        HeaderValue::from_static("1"),
    );
    if let Some(name) = version_header {
        forward::set_version_header(&mut headers, name, &mirror.version);
    }
    let (body_tx, body_rx) = if bodiless {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let (primary_tx, primary_rx) = if mirror.compare {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let copy = Copy {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers,
        body: body_rx,
        primary: primary_rx,
    };
    tokio::spawn(run(place, copy, upstreams.clone()));
    Some(Copying {
        body: body_tx,
        max_body: mirror.max_body,
        primary: primary_tx,
    })
}

impl Copying {
    /// The primary's request body, keeping a copy for the mirror on the way.
    pub fn tee(&mut self, body: ProxyBody) -> ProxyBody {
        match self.body.take() {
            None => body,
            Some(sender) => TeeBody {
                inner: body,
                kept: BytesMut::new(),
                max: self.max_body,
                sender: Some(sender),
            }
            .boxed(),
        }
    }

    /// The primary's response, its body hashed on the way to the client when the mirror
    /// compares (else as it is).
    pub fn watch_response(
        &mut self,
        response: http::Response<ProxyBody>,
    ) -> http::Response<ProxyBody> {
        match self.primary.take() {
            None => response,
            Some(sender) => {
                let status = response.status();
                let max = self.max_body;
                response.map(|inner| {
                    HashingBody {
                        inner,
                        hasher: Box::new(Xxh3::new()),
                        hashed: 0,
                        max,
                        status,
                        sender: Some(sender),
                    }
                    .boxed()
                })
            }
        }
    }
}

/// The copy as its task sends it.
struct Copy {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    /// The body, once the primary's has been read whole (`None`: no body).
    body: Option<oneshot::Receiver<Result<Bytes, SkipReason>>>,
    /// The primary's answer, with `compare`.
    primary: Option<oneshot::Receiver<PrimaryAnswer>>,
}

/// The copy's task: the body, the request, its answer, the comparison. Holds its place until
/// it ends.
async fn run(place: Place, copy: Copy, upstreams: Arc<LiveUpstreams>) {
    let mirror = &place.target.mirror;
    let observer = &place.observer;
    let Copy {
        method,
        uri,
        mut headers,
        body,
        primary,
    } = copy;
    let body = match body {
        None => Bytes::new(),
        Some(rx) => match rx.await {
            Ok(Ok(body)) => body,
            // Too large, or the client's body broke off before its end: nothing whole to copy.
            Ok(Err(reason)) => return tell(observer, mirror, MirrorEvent::Skipped(reason)),
            Err(_) => return tell(observer, mirror, MirrorEvent::Skipped(SkipReason::Body)),
        },
    };
    if !body.is_empty() {
        // The primary's body may have gone chunked; the copy's length is known.
        headers.remove(TRANSFER_ENCODING);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut request = Request::new(Full::new(body).map_err(|never| match never {}).boxed());
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;

    let started = Instant::now();
    let exchange = async {
        let activity = Activity::new();
        let exchange = upstreams
            .send_with(
                mirror.upstream,
                request,
                &activity,
                &mut SendOptions::default(),
            )
            .await
            .map_err(|_| SkipReason::Error)?;
        let status = exchange.response.status();
        tell(
            observer,
            mirror,
            MirrorEvent::Answered {
                status,
                latency: started.elapsed(),
            },
        );
        // Read to the end, so the connection goes back to the pool; hashed up to the limit.
        let mut hashing = Hashing::new(mirror.max_body);
        let mut body = exchange.response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| SkipReason::Error)?;
            if let Some(data) = frame.data_ref() {
                hashing.update(data);
            }
        }
        Ok::<_, SkipReason>((status, hashing.finish()))
    };
    let (status, hash) = match tokio::time::timeout(mirror.timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => return tell(observer, mirror, MirrorEvent::Skipped(reason)),
        Err(_) => return tell(observer, mirror, MirrorEvent::Skipped(SkipReason::Timeout)),
    };
    let Some(primary) = primary else { return };
    let answer = tokio::time::timeout(mirror.timeout, primary)
        .await
        .ok()
        .and_then(Result::ok);
    let result = match answer {
        Some(p) => compare(p, status, hash),
        None => Comparison::NotCompared,
    };
    let mismatch = match (result, answer) {
        (Comparison::Mismatch, Some(p)) => Some(Mismatch {
            at: std::time::SystemTime::now(),
            path: uri.path().to_string(),
            primary_status: p.status.as_u16(),
            mirror_status: status.as_u16(),
            same_body: p.hash.is_some() && p.hash == hash,
        }),
        _ => None,
    };
    // Kept before it is counted, so that whoever sees the count finds it in the ring.
    if let Some(m) = &mismatch {
        place.target.mismatches.push(m.clone());
    }
    tell(observer, mirror, MirrorEvent::Compared(result));
    if let Some(m) = mismatch.filter(|_| mismatch_log_allowed()) {
        warn!(
            service = %mirror.service,
            version = %mirror.version,
            path = %m.path,
            primary_status = m.primary_status,
            mirror_status = m.mirror_status,
            same_body = m.same_body,
            "mirror answered differently from the primary",
        );
    }
}

/// The two answers compared: a different status is a mismatch whatever the bodies; otherwise
/// both bodies must have been hashed (within `max_body`) to compare.
fn compare(primary: PrimaryAnswer, status: StatusCode, hash: Option<u64>) -> Comparison {
    match (primary.hash, hash) {
        _ if primary.status != status => Comparison::Mismatch,
        (Some(a), Some(b)) if a == b => Comparison::Match,
        (Some(_), Some(_)) => Comparison::Mismatch,
        _ => Comparison::NotCompared,
    }
}

/// Whether one more mismatch may be logged this minute (process-wide; all are counted).
fn mismatch_log_allowed() -> bool {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60);
    if WINDOW.swap(minute, Ordering::AcqRel) != minute {
        LOGGED.store(0, Ordering::Release);
    }
    LOGGED.fetch_add(1, Ordering::AcqRel) < MISMATCH_LOGS_PER_MINUTE
}

/// A body hash bounded by a size: `None` past it.
struct Hashing {
    hasher: Box<Xxh3>,
    hashed: u64,
    max: u64,
}

impl Hashing {
    fn new(max: u64) -> Self {
        Hashing {
            hasher: Box::new(Xxh3::new()),
            hashed: 0,
            max,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.hashed = self.hashed.saturating_add(data.len() as u64);
        if self.hashed <= self.max {
            self.hasher.update(data);
        }
    }

    fn finish(&self) -> Option<u64> {
        (self.hashed <= self.max).then(|| self.hasher.digest())
    }
}

/// The primary's request body, passed on as it comes, with a copy kept up to `max` bytes and
/// sent to the copy's task at its end (or its refusal, once it grows past `max`).
struct TeeBody {
    inner: ProxyBody,
    kept: BytesMut,
    max: u64,
    /// Taken when the copy (or the refusal) is sent.
    sender: Option<oneshot::Sender<Result<Bytes, SkipReason>>>,
}

impl TeeBody {
    fn done(&mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Ok(std::mem::take(&mut self.kept).freeze()));
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), true) = (frame.data_ref(), this.sender.is_some()) {
                    if this.kept.len() as u64 + data.len() as u64 > this.max {
                        this.kept = BytesMut::new();
                        if let Some(sender) = this.sender.take() {
                            let _ = sender.send(Err(SkipReason::Body));
                        }
                    } else {
                        this.kept.extend_from_slice(data);
                    }
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) => this.done(),
            // A broken body is not copied: the sender is dropped with it.
            Poll::Ready(Some(Err(_))) => this.sender = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The primary's response body, passed to the client as it comes, hashed on the way up to
/// `max` bytes; at its end the status and hash go to the copy's task. Dropped before its end:
/// nothing is sent, and the task counts the comparison as not made.
struct HashingBody {
    inner: ProxyBody,
    hasher: Box<Xxh3>,
    hashed: u64,
    max: u64,
    status: StatusCode,
    sender: Option<oneshot::Sender<PrimaryAnswer>>,
}

impl HashingBody {
    fn done(&mut self) {
        if let Some(sender) = self.sender.take() {
            let hash = (self.hashed <= self.max).then(|| self.hasher.digest());
            let _ = sender.send(PrimaryAnswer {
                status: self.status,
                hash,
            });
        }
    }
}

impl Body for HashingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hashed = this.hashed.saturating_add(data.len() as u64);
                    if this.hashed <= this.max {
                        this.hasher.update(data);
                    }
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) => this.done(),
            Poll::Ready(Some(Err(_))) => this.sender = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for HashingBody {
    fn drop(&mut self) {
        // hyper drops an empty body (or a HEAD's) without polling it: that is its end.
        if self.inner.is_end_stream() {
            self.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    fn tee(body: ProxyBody, max: u64) -> (ProxyBody, oneshot::Receiver<Result<Bytes, SkipReason>>) {
        let (tx, rx) = oneshot::channel();
        let mut copying = Copying {
            body: Some(tx),
            max_body: max,
            primary: None,
        };
        (copying.tee(body), rx)
    }

    #[test]
    fn the_cap_bounds_the_places_and_a_release_frees_one() {
        let places = InFlight::default();
        assert!((0..3).all(|_| places.try_acquire(3)));
        assert!(!places.try_acquire(3), "a fourth place under a cap of 3");
        assert_eq!(places.now(), 3);
        places.release();
        assert!(places.try_acquire(3));
        assert!(!places.try_acquire(3));
    }

    #[tokio::test]
    async fn the_cap_holds_under_concurrent_acquires() {
        let places = Arc::new(InFlight::default());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let places = places.clone();
                tokio::spawn(async move { (0..1000).filter(|_| places.try_acquire(50)).count() })
            })
            .collect();
        let mut taken = 0;
        for t in tasks {
            taken += t.await.unwrap();
        }
        assert_eq!(taken, 50);
        assert_eq!(places.now(), 50);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_passed_on_and_copied_whole() {
        let (body, copy) = tee(chunks(&["hello ", "mirror"]), 12);
        let passed = body.collect().await.unwrap().to_bytes();
        assert_eq!(passed, "hello mirror");
        assert_eq!(copy.await.unwrap().unwrap(), "hello mirror");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_passed_on_whole_and_not_copied() {
        let (body, copy) = tee(chunks(&["hello ", "mirror", "!"]), 12);
        let passed = body.collect().await.unwrap().to_bytes();
        assert_eq!(passed, "hello mirror!", "the primary gets all of it");
        assert_eq!(copy.await.unwrap().unwrap_err(), SkipReason::Body);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_copied() {
        let (body, copy) = tee(chunks(&["hello ", "mirror"]), 100);
        drop(body);
        assert!(copy.await.is_err());
    }

    #[tokio::test]
    async fn the_response_hash_is_the_bodys_and_none_past_the_limit() {
        for (max, expected) in [
            (100, Some(xxhash_rust::xxh3::xxh3_64(b"hello mirror"))),
            (5, None),
        ] {
            let (tx, rx) = oneshot::channel();
            let mut copying = Copying {
                body: None,
                max_body: max,
                primary: Some(tx),
            };
            let response = http::Response::new(chunks(&["hello ", "mirror"]));
            let watched = copying.watch_response(response);
            let passed = watched.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(passed, "hello mirror");
            let answer = rx.await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.hash, expected, "max {max}");
        }
    }

    #[test]
    fn the_mismatch_ring_keeps_the_last_ones() {
        let ring = Mismatches::default();
        for i in 0..MISMATCHES_KEPT + 5 {
            ring.push(Mismatch {
                at: std::time::SystemTime::UNIX_EPOCH,
                path: format!("/{i}"),
                primary_status: 200,
                mirror_status: 500,
                same_body: false,
            });
        }
        let kept: Vec<String> = ring.snapshot().into_iter().map(|m| m.path).collect();
        let want: Vec<String> = (5..MISMATCHES_KEPT + 5).map(|i| format!("/{i}")).collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn bounded_hashing_matches_the_whole_hash() {
        let mut h = Hashing::new(10);
        h.update(b"hello");
        h.update(b"world");
        assert_eq!(h.finish(), Some(xxhash_rust::xxh3::xxh3_64(b"helloworld")));
        h.update(b"!");
        assert_eq!(h.finish(), None);
    }
}
