//! Timeouts kept without a timer per wait: a ring of ticks, each a [`Notify`], and one task
//! ([`sweep`]) that wakes each tick's waiters as it passes. Two waits use it:
//!
//! - **An idle kept-alive client connection** waits on its header timeout and the listener's
//!   stop through one `Notified` (64 bytes) in the connection's task, where a timer of its own
//!   (tokio's `Sleep`, 112 bytes) and a wait for stop (80) were. An idle connection is its task,
//!   and issue 15 asks idle connections to cost no more than 1.5x nginx's memory: with this, a
//!   plain connection's task takes 384 bytes instead of 512.
//! - **An upstream's response head** on graygate's own HTTP/1.1 client is awaited within the
//!   response timeout ([`Within`]). A tokio timer per request (made, put into the timer wheel at
//!   its first poll, taken out at its drop, each under the driver's lock) cost about 800
//!   instructions of the roughly 34,000 of a proxied request (issue 15's profile).
//!
//! The owner keeps a ring of [`Notify`]s, one per tick ([`TickClock::new`]: a 64th of the
//! timeout), and one task ([`sweep`]) that, tick by tick, wakes the waits on the tick just
//! passed. A wait is on the first tick at or after its deadline. Woken, it reads the clock:
//! past its deadline it has timed out; before it (a request moved its deadline since), it waits
//! on its new deadline's tick. So a request only moves a number, with no timer and no lock, and
//! a busy connection is woken about once per header timeout for nothing. A timeout fires after
//! its deadline, never before, and at most a tick (plus the sweeper's own lateness) after it.
//! Stop wakes every tick's waiters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Ticks in the ring beyond those a deadline can be ahead of now: room for a sweeper that is
/// late, so that a wait is not put on a tick that comes round again before its own.
const SPARE_TICKS: u64 = 8;
/// Ticks per timeout.
const TICKS: u64 = 64;

/// The clock and the ring of ticks of one timeout (see the module's docs): a listener's header
/// timeout, or an upstream table's response timeout.
#[derive(Debug)]
pub(crate) struct TickClock {
    epoch: Instant,
    /// The timeout, in milliseconds (at least 1).
    timeout_ms: u64,
    tick_ms: u64,
    ticks: Box<[Notify]>,
    /// The last tick whose waiters were woken.
    swept: AtomicU64,
}

impl TickClock {
    /// The ticks of waits of `timeout` each.
    pub fn new(timeout: Duration) -> TickClock {
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX / 4)
            .clamp(1, u64::MAX / 4);
        let tick_ms = (timeout_ms / TICKS).max(1);
        let ring = timeout_ms.div_ceil(tick_ms) + SPARE_TICKS;
        TickClock {
            epoch: Instant::now(),
            timeout_ms,
            tick_ms,
            ticks: (0..ring).map(|_| Notify::new()).collect(),
            swept: AtomicU64::new(0),
        }
    }

    /// Now, in milliseconds since the clock was made.
    pub fn now(&self) -> u64 {
        self.since_epoch(Instant::now())
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The deadline of a wait that starts now: rounded up to the next
    /// millisecond, so that [`Self::now`] (rounded down) never reaches it early.
    pub fn deadline(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        let ms = u64::try_from(elapsed.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        ms.saturating_add(self.timeout_ms)
    }

    /// The first tick at or after `deadline`.
    fn tick_of(&self, deadline: u64) -> u64 {
        deadline.div_ceil(self.tick_ms)
    }

    /// A wait that is woken at the first tick at or after `deadline` (or earlier, by stop, or
    /// by a tick a whole ring before when the sweeper is that late: read the clock when woken).
    /// Poll it once to be woken; it counts wakes from the moment it is made. A tick swept
    /// before the wait was made does not wake it, but such a tick means the deadline has
    /// passed: read the clock after making the wait, and do not wait if it is past.
    pub fn wait_for(&self, deadline: u64) -> Notified<'_> {
        let tick = self.tick_of(deadline);
        self.ticks[(tick % self.ticks.len() as u64) as usize].notified()
    }

    /// Polls `wait`, made by [`Self::wait_for`]`(deadline)`: `Stopped` once `stopping` says so,
    /// `Past` once the clock is past `deadline`; otherwise pending, with the wait registered on
    /// `deadline`'s tick (made anew when a tick a whole ring early woke it).
    pub fn poll_wait<'a>(
        &'a self,
        mut wait: Pin<&mut Notified<'a>>,
        deadline: u64,
        stopping: impl Fn() -> bool,
        cx: &mut Context<'_>,
    ) -> Poll<Ended> {
        // True once the wait was made anew here: it is then polled, and the clock read after that.
        let mut made = false;
        loop {
            // Polled before the flag is read: a stop told after that wakes it.
            let woken = wait.as_mut().poll(cx).is_ready();
            if stopping() {
                return Poll::Ready(Ended::Stopped);
            }
            if !woken && !made {
                return Poll::Pending;
            }
            // Woken by a tick (or registered on an earlier deadline's), or just made: the clock
            // is read after the wait was made, so a tick swept in between (which would not wake
            // it) is seen here as a deadline passed.
            if self.now() >= deadline {
                return Poll::Ready(Ended::Past);
            }
            if !woken {
                return Poll::Pending;
            }
            wait.set(self.wait_for(deadline));
            made = true;
        }
    }

    /// Wakes every waiter, whatever its tick (at stop).
    pub fn wake_all(&self) {
        for tick in self.ticks.iter() {
            tick.notify_waiters();
        }
    }

    /// When the next tick passes: sleep until then, then [`Self::sweep_due`].
    pub fn next_sweep(&self) -> Instant {
        let next = self.swept.load(Ordering::SeqCst) + 1;
        self.epoch + Duration::from_millis(next.saturating_mul(self.tick_ms))
    }

    /// Wakes the waiters of every tick that has passed since the last sweep (at most one round
    /// of the ring: a sweeper later than that wakes every tick once).
    pub fn sweep_due(&self) {
        let ring = self.ticks.len() as u64;
        let now = self.now() / self.tick_ms;
        let swept = self.swept.load(Ordering::SeqCst);
        for tick in (swept + 1).max(now.saturating_sub(ring - 1))..=now {
            self.swept.store(tick, Ordering::SeqCst);
            self.ticks[(tick % ring) as usize].notify_waiters();
        }
        self.swept.store(now.max(swept), Ordering::SeqCst);
    }
}

/// How a wait on a [`TickClock`] ended ([`TickClock::poll_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The owner is stopping.
    Stopped,
    /// The clock is past the deadline.
    Past,
}

/// The sweeper of a clock's ticks: wakes each tick's waiters as it passes, until stop, or until
/// nothing holds the state that holds the clock any more (a listener's: its task and every
/// connection are gone; an upstream table's: a reload replaced it and its last request is
/// over). It holds no strong reference of its own, so it does not keep the state alive, and it
/// does not depend on the owner's task being run to its end either.
pub(crate) async fn sweep<T: Send + Sync>(
    state: std::sync::Weak<T>,
    clock: impl Fn(&T) -> &TickClock,
    stopping: impl Fn(&T) -> bool,
) {
    loop {
        let at = match state.upgrade() {
            Some(state) if !stopping(&state) => clock(&state).next_sweep(),
            _ => return,
        };
        tokio::time::sleep_until(at).await;
        match state.upgrade() {
            Some(state) => clock(&state).sweep_due(),
            None => return,
        }
    }
}

pin_project_lite::pin_project! {
    /// `work` within a deadline of `clock` ([`TickClock::deadline`]): its output, or `None`
    /// once the clock is past the deadline and `work` is still not done. `work` is polled
    /// first, so an output that is there when the time is up is taken.
    pub(crate) struct Within<'a, F> {
        #[pin]
        work: F,
        #[pin]
        wait: Notified<'a>,
        clock: &'a TickClock,
        deadline: u64,
    }
}

impl<'a, F: Future> Within<'a, F> {
    /// `work`, bounded by `clock`'s timeout from now.
    pub fn new(clock: &'a TickClock, work: F) -> Self {
        let deadline = clock.deadline();
        Within {
            work,
            wait: clock.wait_for(deadline),
            clock,
            deadline,
        }
    }
}

impl<'a, F: Future> Future for Within<'a, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let clock: &'a TickClock = this.clock;
        clock
            .poll_wait(this.wait, *this.deadline, || false, cx)
            .map(|_past| None)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Arc;

    use super::*;

    /// Polls `wait` once, as a connection does to be woken.
    fn poll_once(wait: std::pin::Pin<&mut Notified<'_>>) -> bool {
        let waker = futures_util::task::noop_waker();
        wait.poll(&mut Context::from_waker(&waker)).is_ready()
    }

    #[test]
    fn ticks_divide_the_timeout_and_the_ring_covers_it() {
        let clock = TickClock::new(Duration::from_secs(10));
        assert_eq!(clock.tick_ms, 156);
        assert!(clock.ticks.len() as u64 * clock.tick_ms >= 10_000 + SPARE_TICKS * 156);
        let tiny = TickClock::new(Duration::from_millis(10));
        assert_eq!(tiny.tick_ms, 1);
        assert_eq!(tiny.ticks.len() as u64, 10 + SPARE_TICKS);
        // Zero is taken as one millisecond, and a huge timeout does not overflow.
        assert_eq!(TickClock::new(Duration::ZERO).timeout_ms, 1);
        let huge = TickClock::new(Duration::MAX);
        assert!(huge.deadline() > huge.now());
    }

    #[tokio::test]
    async fn a_wait_is_woken_after_its_deadline_never_before() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(640)));
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&clock), |c| c, |_| false));
        let started = Instant::now();
        let deadline = clock.deadline();
        {
            let mut wait = pin!(clock.wait_for(deadline));
            assert!(!poll_once(wait.as_mut()), "woken before any tick");
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("woken at its tick");
        }
        let at = clock.now();
        assert!(
            at >= deadline,
            "woken at {at} ms, before its deadline {deadline} ms"
        );
        assert!(started.elapsed() >= Duration::from_millis(640));
        assert!(clock.swept.load(Ordering::SeqCst) >= clock.tick_of(deadline));
        // The sweeper ends once nothing else holds the clock.
        drop(clock);
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("the sweeper ends with its state")
            .unwrap();
    }

    #[tokio::test]
    async fn within_gives_the_work_s_output_or_none_after_the_deadline_never_before() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(320)));
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&clock), |c| c, |_| false));
        // Done in time: its output.
        let quick = Within::new(&clock, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        });
        assert_eq!(quick.await, Some(7));
        // Never done: `None`, once the clock is past the deadline.
        let started = Instant::now();
        let wait = Within::new(&clock, std::future::pending::<()>());
        let deadline = wait.deadline;
        let out = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the wait ends at its tick");
        assert_eq!(out, None);
        assert!(clock.now() >= deadline, "ended before its deadline");
        assert!(started.elapsed() >= Duration::from_millis(320));
        // Done when the time is up: the output is taken.
        let ready = Within::new(&clock, std::future::ready(1));
        assert_eq!(ready.await, Some(1));
        drop(clock);
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("the sweeper ends with its clock")
            .unwrap();
    }

    #[tokio::test]
    async fn wake_all_wakes_every_tick_and_a_late_sweeper_misses_none() {
        let clock = Arc::new(TickClock::new(Duration::from_millis(64)));
        let mut near = pin!(clock.wait_for(clock.deadline()));
        let mut far = pin!(clock.wait_for(clock.deadline() + 30));
        assert!(!poll_once(near.as_mut()) && !poll_once(far.as_mut()));
        clock.wake_all();
        assert!(poll_once(near.as_mut()) && poll_once(far.as_mut()));

        // A wait on every tick of the ring, then more than two rounds of it (72 ms each) with
        // no sweeper: its first sweep wakes every tick at once.
        let ring = clock.ticks.len() as u64;
        let mut waits: Vec<_> = (1..=ring)
            .map(|t| Box::pin(clock.wait_for(t * clock.tick_ms)))
            .collect();
        for wait in &mut waits {
            assert!(!poll_once(wait.as_mut()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let sweeper = tokio::spawn(sweep(
            Arc::downgrade(&clock),
            |c| c,
            move |_| stopping.load(Ordering::SeqCst),
        ));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let unwoken = waits
            .iter_mut()
            .map(|wait| poll_once(wait.as_mut()))
            .filter(|woken| !woken)
            .count();
        assert_eq!(unwoken, 0, "ticks left unwoken by the first sweep");
        // It ends at stop (at its next tick), though the clock lives on.
        stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), sweeper)
            .await
            .expect("the sweeper ends at stop")
            .unwrap();
    }
}
