//! How a listener's shutdown reaches its connections, in two steps: **stop** (take no new
//! request, finish the ones in flight; an idle connection closes) and, once the shutdown
//! deadline has passed, **close** (drop every connection still open, busy or not).
//!
//! One flag and one [`Notify`] for the whole listener, read by every connection, where there
//! were two `watch` channels: a connection waited on each with a `wait_for` (144 bytes) held
//! in its task for its whole life, and an idle kept-alive connection is its task (issue 15 asks
//! idle connections to cost no more than 1.5x nginx's memory). Now an idle connection of the own
//! HTTP/1.1 loop learns of stop through the wait it has anyway, for its header timeout (`idle`:
//! the server wakes every such wait at stop), and does not wait for close at all: close comes
//! after stop, and stop ends an idle connection. A busy step (the look at the first bytes, a
//! request, a TLS handshake, hyper's connection) waits here, inside the box that holds it while
//! it runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;

/// Stop: finish what is in flight.
const STOP: u8 = 1;
/// Close: drop everything.
const CLOSE: u8 = 2;

/// The shutdown steps of one listener's connections (see the module's docs).
#[derive(Debug, Default)]
pub(super) struct Shutdown {
    /// The step taken: 0 (none, running), `STOP` or `CLOSE`.
    step: AtomicU8,
    changed: Notify,
    /// Connections open now ([`Self::opened`] to [`Self::closed_one`]).
    open: AtomicUsize,
    /// Told when the last open connection is gone.
    none_open: Notify,
}

impl Shutdown {
    /// Tells every connection to stop.
    pub fn stop(&self) {
        self.take(STOP);
    }

    /// Tells every connection to close now (after [`Self::stop`], or in its place).
    pub fn close(&self) {
        self.take(CLOSE);
    }

    fn take(&self, step: u8) {
        self.step.fetch_max(step, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// True once stop (or close) has been told.
    pub fn is_stopping(&self) -> bool {
        self.step.load(Ordering::SeqCst) >= STOP
    }

    /// Done once stop (or close) has been told.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + '_ {
        self.reached(STOP)
    }

    /// Done once close has been told.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.reached(CLOSE)
    }

    /// Not an `async fn`: a block over its arguments keeps one copy of each (about 80 bytes
    /// in all, most of it the `Notified`), where an `async fn` would keep two.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps a second copy of its arguments"
    )]
    fn reached(&self, step: u8) -> impl Future<Output = ()> + Send + '_ {
        until(&self.changed, move || {
            self.step.load(Ordering::SeqCst) >= step
        })
    }

    /// Counts a connection as open, until [`Self::closed_one`].
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts an open connection as gone.
    pub fn closed_one(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.none_open.notify_waiters();
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Done once no connection is open (at once if none is).
    pub fn all_gone(&self) -> impl Future<Output = ()> + Send + '_ {
        until(&self.none_open, || self.open() == 0)
    }

    /// `work`'s output, or `None` if stop is told first (`work` is dropped then).
    pub fn unless_stopped<'a, W: Future + 'a>(
        &'a self,
        work: W,
    ) -> Unless<W, impl Future<Output = ()> + Send + 'a> {
        Unless {
            work,
            step: self.stopped(),
        }
    }

    /// `work`'s output, or `None` if close is told first (`work` is dropped then).
    pub fn unless_closed<'a, W: Future + 'a>(
        &'a self,
        work: W,
    ) -> Unless<W, impl Future<Output = ()> + Send + 'a> {
        Unless {
            work,
            step: self.closed(),
        }
    }
}

pin_project_lite::pin_project! {
    /// `work`'s output, or `None` once `step` is done first ([`Shutdown::unless_stopped`],
    /// [`Shutdown::unless_closed`]). A future of its own rather than an `async fn` with a
    /// `select!`: that kept `work` twice (as its argument, then as the running `select!`'s) and
    /// moved it from one to the other when first polled, and `work` is a request's whole
    /// exchange, about 6 KB, so every request paid that copy.
    pub(super) struct Unless<W, S> {
        #[pin]
        work: W,
        #[pin]
        step: S,
    }
}

impl<W: Future, S: Future<Output = ()>> Future for Unless<W, S> {
    type Output = Option<W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // `work` first: what is done by the time the step is taken still counts.
        if let Poll::Ready(done) = this.work.poll(cx) {
            return Poll::Ready(Some(done));
        }
        this.step.poll(cx).map(|()| None)
    }
}

/// Done once `done` is true, read each time `notify` wakes its waiters (and at once).
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn until<'a>(
    notify: &'a Notify,
    done: impl Fn() -> bool + Send + 'a,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        loop {
            // Made before `done` is read: a `Notified` is woken by every `notify_waiters`
            // after it was made, polled or not, so a change between the two is not missed.
            let changed = notify.notified();
            if done() {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn each_step_wakes_its_waiters_and_stop_does_not_close() {
        let shutdown = Arc::new(Shutdown::default());
        let stopped = tokio::spawn({
            let s = shutdown.clone();
            async move { s.stopped().await }
        });
        let closed = tokio::spawn({
            let s = shutdown.clone();
            async move { s.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!shutdown.is_stopping());
        shutdown.stop();
        assert!(shutdown.is_stopping());
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("a waiter for stop is woken by stop")
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!closed.is_finished(), "stop must not close");
        shutdown.close();
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("a waiter for close is woken by close")
            .unwrap();
        // A wait that starts after the step is done at once.
        shutdown.stopped().await;
        shutdown.closed().await;
    }

    /// A request's exchange (kilobytes) runs inside `unless_closed`: the wrapper must hold it
    /// once, in place. An `async fn` with a `select!` held it twice and copied it from one to
    /// the other at its first poll, on every request.
    #[tokio::test]
    async fn unless_closed_holds_its_work_once() {
        let shutdown = Shutdown::default();
        let big = [7u8; 4096];
        let work = async move {
            tokio::task::yield_now().await;
            big.iter().map(|&b| usize::from(b)).sum::<usize>()
        };
        let work_size = std::mem::size_of_val(&work);
        let wrapped = shutdown.unless_closed(work);
        let wrapped_size = std::mem::size_of_val(&wrapped);
        assert!(work_size >= 4096, "the work holds its array: {work_size}");
        assert!(
            wrapped_size <= work_size + 256,
            "unless_closed adds {} bytes to work of {work_size}",
            wrapped_size - work_size
        );
        assert_eq!(wrapped.await, Some(7 * 4096));
        // Closed first: the work is dropped unfinished.
        shutdown.close();
        let never = shutdown.unless_closed(std::future::pending::<()>());
        assert_eq!(never.await, None);
    }

    #[tokio::test]
    async fn all_gone_waits_for_the_last_open_connection() {
        let shutdown = Arc::new(Shutdown::default());
        shutdown.all_gone().await;
        shutdown.opened();
        shutdown.opened();
        assert_eq!(shutdown.open(), 2);
        let waiting = tokio::spawn({
            let s = shutdown.clone();
            async move { s.all_gone().await }
        });
        tokio::task::yield_now().await;
        shutdown.closed_one();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one connection is still open");
        shutdown.closed_one();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the last one is gone")
            .unwrap();
        assert_eq!(shutdown.open(), 0);
    }

    #[tokio::test]
    async fn close_alone_also_stops() {
        let shutdown = Shutdown::default();
        shutdown.close();
        assert!(shutdown.is_stopping());
        shutdown.stopped().await;
    }

    #[tokio::test]
    async fn work_is_dropped_at_its_step_and_finished_before_it() {
        let shutdown = Arc::new(Shutdown::default());
        assert_eq!(shutdown.unless_stopped(async { 7 }).await, Some(7));
        let pending = tokio::spawn({
            let s = shutdown.clone();
            async move { s.unless_closed(std::future::pending::<()>()).await }
        });
        let stopped_work = tokio::spawn({
            let s = shutdown.clone();
            async move { s.unless_stopped(std::future::pending::<()>()).await }
        });
        tokio::task::yield_now().await;
        shutdown.stop();
        assert_eq!(stopped_work.await.unwrap(), None);
        tokio::task::yield_now().await;
        assert!(
            !pending.is_finished(),
            "work waiting for close runs on through stop"
        );
        shutdown.close();
        assert_eq!(pending.await.unwrap(), None);
    }
}
