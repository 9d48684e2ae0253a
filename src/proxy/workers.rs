//! The data plane's workers: `workers = N` runs N threads, each with its own single-threaded
//! tokio runtime, as nginx runs N worker processes.
//!
//! Why not tokio's multi-thread scheduler: with it a connection's tasks (the client connection,
//! its upstream connection, the pool check-in) wake each other across threads, and the profile
//! showed that cost dominating (`docs/benchmarks.md`). In a worker everything a client
//! connection starts runs on the worker's thread: `tokio::spawn` in the data plane spawns on
//! the runtime of the worker that calls it, and its timers are that runtime's.
//!
//! - **Spreading connections.** Every worker has its own listening socket on each data plane
//!   address, bound with `SO_REUSEPORT` (`listen::bind_each`): the kernel hashes each new
//!   connection to one socket's queue, and only that worker wakes. [`spread`] says which worker
//!   serves which socket when the sockets are not one per worker (an upgrade handed more or
//!   fewer, or sockets without `SO_REUSEPORT`, which workers then share).
//! - **One worker** (`workers = 1`) starts no thread: the data plane runs on the main runtime,
//!   which is then single-threaded too, exactly as before workers existed.
//! - **What stays on the main runtime:** the admin API, the metrics listener, the store and its
//!   watcher, rollouts, health checks, reloads and upgrades. What the workers share with it is
//!   behind `Arc`, `ArcSwap` and atomics; a store lookup that misses the cache is answered
//!   through the store's own connection, wherever that lives.
//! - **Upstream connections are the worker's own:** the idle HTTP/1.1 connections of each
//!   server are pooled per worker ([`shard`]), so that a connection made and driven on one
//!   worker is never handed to another one's request. (An HTTP/2 upstream connection is one
//!   per server, multiplexed, and shared by the workers: driven by the worker that opened it.)
//! - **Stopping:** every worker stops accepting on the same signal and finishes its connections
//!   within `timeouts.shutdown`; the runtimes are dropped once all workers are done (a shared
//!   HTTP/2 connection lives on one of them), and each reports how its listeners ended.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Barrier};
use tokio::task::JoinHandle;

thread_local! {
    /// The index of the worker this thread is; `None` on every other thread (the main runtime's,
    /// a blocking pool's).
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Workers of this process's data plane; 1 until one is started with more. Process-wide
/// because there is one data plane per process: a second one in the same process (a test) with
/// another count only shares pool shards, which stays correct.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The index of the worker the caller runs on, if it runs on one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many workers the data plane runs (for sizing per-worker state such as pools).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed).max(1)
}

/// Which of `len` per-worker slots the caller uses: its worker's, or the first one off the
/// workers (the main runtime with `workers = 1`, health checks, tests).
pub fn shard(len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    current().unwrap_or(0) % len
}

/// The number of workers to run: `configured` (`workers`), else one per core.
pub fn resolve(configured: Option<usize>) -> usize {
    configured
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1)
}

/// Which sockets each of `workers` workers serves, given `sockets` sockets for one address:
/// socket `j` to worker `j % workers`, so that every socket is served (an upgrade may hand
/// over more sockets than there are workers now, and a socket left unserved would strand the
/// connections the kernel queues on it); a worker left without one then shares socket
/// `i % sockets` (they were not bound with `SO_REUSEPORT`, so no more can be bound).
pub fn spread(sockets: usize, workers: usize) -> Vec<Vec<usize>> {
    let workers = workers.max(1);
    let mut each = vec![Vec::new(); workers];
    for j in 0..sockets {
        each[j % workers].push(j);
    }
    if sockets > 0 {
        for (i, served) in each.iter_mut().enumerate() {
            if served.is_empty() {
                served.push(i % sockets);
            }
        }
    }
    each
}

/// Records that the data plane runs `n` workers (see [`count`]).
pub fn set_count(n: usize) {
    COUNT.store(n.max(1), Ordering::Relaxed);
}

/// Starts one worker per entry of `each`: worker `i` is a thread named `graygate-worker-<i>`
/// with a single-threaded runtime that runs `each[i]()` to its end. The returned tasks, on the
/// caller's runtime, end with what each returned, once every worker is done: a worker's
/// runtime is kept running until then, since another worker may still use a connection it
/// drives (an HTTP/2 upstream connection is shared by the workers). `Err`: the index of the
/// worker whose thread could not be started, and why.
pub fn spawn_all<F, Fut>(
    each: Vec<F>,
) -> Result<Vec<JoinHandle<io::Result<()>>>, (usize, io::Error)>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    let all_done = Arc::new(Barrier::new(each.len()));
    each.into_iter()
        .enumerate()
        .map(|(index, serve)| spawn(index, all_done.clone(), serve).map_err(|e| (index, e)))
        .collect()
}

/// One worker of [`spawn_all`].
fn spawn<F, Fut>(
    index: usize,
    all_done: Arc<Barrier>,
    serve: F,
) -> io::Result<JoinHandle<io::Result<()>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("graygate-worker-{index}"))
        .spawn(move || {
            WORKER.with(|w| w.set(Some(index)));
            let ended = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let ended = serve().await;
                        all_done.wait().await;
                        ended
                    })
                });
            let _ = done.send(ended);
        })?;
    Ok(tokio::spawn(async move {
        finished
            .await
            .unwrap_or_else(|_| Err(io::Error::other(format!("worker {index} panicked"))))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_socket_per_worker_each_serves_its_own() {
        assert_eq!(spread(2, 2), vec![vec![0], vec![1]]);
        assert_eq!(spread(1, 1), vec![vec![0]]);
    }

    #[test]
    fn more_sockets_than_workers_are_all_served() {
        assert_eq!(spread(4, 2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(spread(3, 1), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn fewer_sockets_than_workers_are_shared() {
        assert_eq!(spread(1, 3), vec![vec![0], vec![0], vec![0]]);
        assert_eq!(spread(2, 3), vec![vec![0], vec![1], vec![0]]);
    }

    #[test]
    fn every_socket_is_served_whatever_the_counts() {
        for sockets in 1..6 {
            for workers in 1..6 {
                let each = spread(sockets, workers);
                assert_eq!(each.len(), workers);
                assert!(each.iter().all(|s| !s.is_empty()));
                for j in 0..sockets {
                    assert!(each.iter().any(|s| s.contains(&j)), "{sockets}/{workers}");
                }
            }
        }
    }

    #[test]
    fn a_worker_knows_its_index_and_other_threads_are_none() {
        assert_eq!(current(), None);
        assert_eq!(shard(4), 0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ended = runtime.block_on(async {
            let each = (0..2)
                .map(|index| {
                    move || async move {
                        assert_eq!(current(), Some(index));
                        assert_eq!(shard(2), index);
                        // A task it spawns runs on its thread too.
                        let inner = tokio::spawn(async { current() }).await.unwrap();
                        assert_eq!(inner, Some(index));
                        Err(io::Error::other(format!("worker {index} served")))
                    }
                })
                .collect();
            let mut ended = Vec::new();
            for worker in spawn_all(each).unwrap() {
                ended.push(worker.await.unwrap().unwrap_err().to_string());
            }
            ended
        });
        assert_eq!(ended, ["worker 0 served", "worker 1 served"]);
        assert_eq!(current(), None);
    }

    #[test]
    fn no_count_means_one_worker_per_core() {
        assert_eq!(resolve(Some(3)), 3);
        assert_eq!(resolve(Some(0)), 1);
        assert!(resolve(None) >= 1);
    }
}
