//! Waiting for something without sleeping blind: [`eventually`] polls a probe until it succeeds
//! or a deadline passes, then panics naming what it waited for and what it saw last.
//!
//! Every deadline is multiplied by the patience read from `GRAYGATE_TEST_PATIENCE` (default 1):
//! a slow or busy machine runs the suite with, say, `GRAYGATE_TEST_PATIENCE=3` instead of failing
//! on time. At the default, a bound given with [`Eventually::within`] is the bound the product
//! promises (a change seen within 100 ms) and is checked as it is. Time bounds that tests assert
//! directly (`started.elapsed() < patient(..)`) are stretched the same way by [`patient`].

use std::fmt::Debug;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits when no bound is given (before patience).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The longest pause between two probes: short enough that waiting adds little to a test.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// The patience multiplier from `GRAYGATE_TEST_PATIENCE` (a number, at least 1; default 1).
pub fn patience() -> f64 {
    static PATIENCE: OnceLock<f64> = OnceLock::new();
    *PATIENCE.get_or_init(|| match std::env::var("GRAYGATE_TEST_PATIENCE") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(p) if p >= 1.0 && p.is_finite() => p,
            _ => panic!("GRAYGATE_TEST_PATIENCE={text:?}: give a number of at least 1, like 3"),
        },
    })
}

/// `limit` stretched by the [`patience`] multiplier.
pub fn patient(limit: Duration) -> Duration {
    limit.mul_f64(patience())
}

/// What a probe answers: success with a value, or what it saw instead (for the panic message).
///
/// Any `Ok` ends the wait: a probe that returns `Result<bool, _>` is done at `Ok(false)` too, so
/// turn "not yet" into an `Err` carrying what was seen.
pub trait Outcome {
    /// What `eventually(..).await` returns once the probe succeeds.
    type Value;
    /// `Ok` ends the wait; `Err` carries what was observed.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// `Ok(got)` when `got == want`, else `Err(got)`: a probe answer that reports what it saw.
pub fn equals<T: PartialEq<W>, W>(got: T, want: W) -> Result<T, T> {
    if got == want {
        Ok(got)
    } else {
        Err(got)
    }
}

/// A wait being set up: `.within(limit)` bounds it, `.await` runs it.
#[must_use = "an eventually does nothing until it is awaited"]
pub struct Eventually<'a, F> {
    what: String,
    limit: Duration,
    probe: F,
    /// The probe may borrow from the test (a client, a server guard) for as long as `'a`.
    _borrows: PhantomData<&'a ()>,
}

/// Polls `probe` until it succeeds, within [`DEFAULT_DEADLINE`] unless
/// [`within`](Eventually::within) says otherwise; on timeout, panics with `what` and the last
/// observed value. The probe is an async closure; it may return `bool` or a `Result` whose error
/// is what it saw (see [`equals`]), and `.await` gives back the success value.
pub fn eventually<'a, F>(what: impl Into<String>, probe: F) -> Eventually<'a, F> {
    Eventually {
        what: what.into(),
        limit: DEFAULT_DEADLINE,
        probe,
        _borrows: PhantomData,
    }
}

impl<F> Eventually<'_, F> {
    /// Bounds the wait by `limit` (stretched by [`patience`]).
    pub fn within(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }
}

impl<'a, F, O> IntoFuture for Eventually<'a, F>
where
    F: AsyncFnMut() -> O + 'a,
    O: Outcome + 'a,
{
    type Output = O::Value;
    type IntoFuture = Pin<Box<dyn Future<Output = O::Value> + 'a>>;

    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            let limit = patient(self.limit);
            let started = Instant::now();
            // Start fast (a bound of 100 ms needs fine steps), back off to MAX_PAUSE.
            let mut pause = Duration::from_millis(1);
            let cap = (limit / 100).clamp(Duration::from_millis(1), MAX_PAUSE);
            loop {
                let seen = match (self.probe)().await.outcome() {
                    Ok(value) => return value,
                    Err(seen) => seen,
                };
                if started.elapsed() >= limit {
                    panic!(
                        "timed out after {limit:?} waiting for {} (patience {}); last seen: {seen}",
                        self.what,
                        patience()
                    );
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(cap);
            }
        })
    }
}
