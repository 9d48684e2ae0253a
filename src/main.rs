//! The `graygate` command: parses arguments and hands over to the library. `anyhow` lives only
//! here, where errors become messages and exit codes.

use anyhow::Context;
use clap::{Parser, Subcommand};
use graygate::config::LogFormat;
use graygate::reload::log_reloaded;
use graygate::store::ErrorChain;
use graygate::{app, config, demo};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

// The memory allocator, chosen at build time (docs/benchmarks.md, "Allocator", has the figures).
// With both features on, mimalloc is used; with neither, the system allocator (glibc malloc).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
// jemalloc's options of our own, read at its first allocation (after its built-in ones, which
// start the background thread; before `_RJEM_MALLOC_CONF`, which can still override them): a
// freed page that stays unused goes back to the system within about a second instead of ten, so
// that RSS falls back after a burst of connections closes (bench/idle-conns.sh: +30% -> +6% ten
// seconds after 10,000 connections closed; docs/benchmarks.md).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 20] = b"dirty_decay_ms:1000\0";
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "graygate", version, about = "A gray-release (canary) gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file. SIGHUP reads the config again: upstreams, timeouts,
    /// the log format and the TLS certificates are applied; the config's policy only when it changed since it was
    /// last applied, never over a rollout in progress (`graygate ctl reload --force` does).
    /// SIGUSR1 reopens the access log file (log rotation). SIGUSR2 upgrades with no request
    /// lost: the binary at this path is started with the same arguments, takes over the listening
    /// sockets and the store, and this process stops once it serves. SIGINT/SIGTERM stop it
    /// gracefully.
    Run {
        #[arg(long, short, env = "GRAYGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file (and the policy it names), like `nginx -t`: exit 0 if valid, 1 if not.
    Check {
        #[arg(long, short, env = "GRAYGATE_CONFIG")]
        config: PathBuf,
    },
    /// Bulk-load a list into the store the config names, from lines of `key [value]` (value 1
    /// when absent). With the embedded store, run it while graygate is stopped; into Redis or memcached it
    /// runs while graygate serves.
    Import {
        #[arg(long, short, env = "GRAYGATE_CONFIG")]
        config: PathBuf,
        /// The list to write (e.g. gray_ips).
        #[arg(long)]
        list: String,
        /// Time to live of every entry, like "1h": 1 second to 10 years (default: no expiry).
        #[arg(long, value_parser = ttl)]
        ttl: Option<std::time::Duration>,
        /// The file to read; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
    /// Control a running graygate through its admin API: gray lists, weights, explain, promote,
    /// rollback, history, undo, reload. Exit codes: 0 done, 1 refused by the API, 2 usage, 3
    /// unreachable, failed, or not a graygate admin API.
    // Boxed: the largest variant by far, and only one command runs.
    Ctl(Box<graygate::cli::CtlArgs>),
    /// Start a self-contained demo: built-in stable and canary backends, an embedded store and an
    /// example policy, then print curl commands that show each rule. `demo rollout` shows a
    /// whole rollout instead.
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        /// Where the demo gateway listens (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(subcommand)]
        walkthrough: Option<Walkthrough>,
    },
}

#[derive(Subcommand)]
enum Walkthrough {
    /// A rollout carried by graygate itself, with built-in traffic and steps of seconds: a
    /// healthy canary goes 5% -> 25% -> 50% -> 100% and is promoted (about 30s). Exit 0 when it
    /// came out as expected.
    Rollout {
        /// Roll out a canary that fails 10% of its requests instead: graygate aborts it, with the
        /// verdict that says why (in seconds; under a minute).
        #[arg(long)]
        failing: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => {
            init_logging(LogFormat::Text);
            return check(&config);
        }
        Command::Ctl(args) => {
            init_logging(LogFormat::Text);
            return graygate::cli::run(*args);
        }
        // The config says how the log is written, so it is read before anything is logged.
        Command::Run { config } => {
            // Before any thread starts: reading what an upgrade handed over clears it from the
            // environment.
            let inherited = graygate::upgrade::Inheritance::from_env();
            config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    let log = init_logging(c.log.format);
                    let inherited = inherited?;
                    runtime(false).and_then(|rt| rt.block_on(run(c, log, inherited)))
                })
        }
        Command::Import {
            config,
            list,
            ttl,
            file,
        } => config::load_without_admin_secrets(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                init_logging(c.log.format);
                runtime(false).and_then(|rt| rt.block_on(import(c, list, ttl, file)))
            }),
        Command::Demo {
            listen,
            walkthrough: None,
        } => {
            init_logging(LogFormat::Text);
            runtime(true).and_then(|rt| {
                // The stop signals are taken over inside the runtime, which they register with.
                rt.block_on(async { demo::run(listen, stop_signal()).await })
                    .map_err(Into::into)
            })
        }
        Command::Demo {
            walkthrough: Some(Walkthrough::Rollout { failing }),
            ..
        } => {
            // The walkthrough prints every change of the rollout itself: the log shows only
            // what went wrong, unless GRAYGATE_LOG asks for more.
            init_logging_at(LogFormat::Text, "warn");
            let canary = if failing {
                demo::rollout::Canary::Failing
            } else {
                demo::rollout::Canary::Healthy
            };
            runtime(true).and_then(|rt| {
                rt.block_on(async { demo::rollout::run(canary, stop_signal()).await })
                    .with_context(|| canary.command())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<config::ConfigError>() {
                Some(e) => print_config_error(e),
                None => eprintln!("graygate: {}", error_chain(e.as_ref())),
            }
            ExitCode::FAILURE
        }
    }
}

/// A config error, one line per problem (a config can have several, like unset variables).
fn print_config_error(error: &config::ConfigError) {
    for e in error.each() {
        eprintln!("graygate: {}", error_chain(e));
    }
}

/// What the process log is written through, under its filter.
type LogSubscriber = Layered<EnvFilter, Registry>;

/// The process log's writer in one format; swapped whole when a reload changes the format.
type LogWriter = Box<dyn Layer<LogSubscriber> + Send + Sync>;

/// Switches the process log to another format (a config reload changed `[log] format`).
type LogSwitch = reload::Handle<LogWriter, LogSubscriber>;

/// The process log on stderr: which messages from `GRAYGATE_LOG` (default `info`), as text or
/// JSON lines (`[log] format`). Text is coloured only when stderr is a terminal, so that a log
/// written to a file or a pipe holds no escape codes. The format can be switched later.
fn init_logging(format: LogFormat) -> LogSwitch {
    init_logging_at(format, "info")
}

/// [`init_logging`] with another level than `info` when `GRAYGATE_LOG` is not set.
fn init_logging_at(format: LogFormat, default: &str) -> LogSwitch {
    let filter =
        EnvFilter::try_from_env("GRAYGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, switch) = reload::Layer::new(log_writer(format));
    tracing_subscriber::registry()
        .with(filter)
        .with(writer)
        .init();
    switch
}

/// The log writer of one format.
fn log_writer(format: LogFormat) -> LogWriter {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, each said once: a cause
/// whose text its parent already shows (a message that interpolates its `source`, as many do so
/// that they read well alone) is not repeated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    graygate::store::ErrorChain(error).to_string()
}

/// The main runtime. `run` uses a single-threaded one: the data plane runs on worker threads of
/// its own (`workers`, see `graygate::proxy::workers`), or on this one with one worker, where no
/// wake-up then ever crosses threads (measured: the multi-thread scheduler with one worker
/// spends its time in cross-thread wake-ups). The demos use the multi-thread one.
fn runtime(multi_thread: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            let policy = c
                .policy
                .as_ref()
                .map_or("no policy (seeded later)".to_string(), |p| {
                    format!(
                        "policy from {} with {} services",
                        p.file.display(),
                        p.doc.services.len()
                    )
                });
            let tls = c.tls.as_ref().map_or(String::new(), |t| {
                format!(
                    ", {} TLS listener(s) with {} certificate(s)",
                    t.listen.len(),
                    t.certs.len()
                )
            });
            println!(
                "graygate: {} is valid: {} listener(s){tls}, {} upstream(s), {policy}",
                path.display(),
                c.listen.len(),
                c.upstreams.len()
            );
            for warning in c.warnings() {
                println!("graygate: warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: config::Config,
    log: LogSwitch,
    inherited: graygate::upgrade::Inheritance,
) -> anyhow::Result<()> {
    // This binary's path and arguments, read now: SIGUSR2 starts what is installed at this path
    // then (a new binary replaces the file; the path stays).
    let exe = std::env::current_exe().context("cannot find graygate's own path")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut predecessor = inherited.predecessor();
    let mut running = match &mut predecessor {
        None => {
            let store = app::open_store(&config).await?;
            app::start(&config, store).await?
        }
        Some(predecessor) => {
            let store = async {
                predecessor.release_store().await?;
                Ok(app::open_store(&config).await?)
            };
            app::start_with(&config, &inherited, store).await?
        }
    };
    drop(inherited);
    running
        .reloader
        .set_log_format_switch(Box::new(move |format| {
            log.reload(log_writer(format)).map_err(|e| e.to_string())
        }));
    // SIGHUP and SIGUSR2 are taken over before the listening lines: a script or test that
    // signals as soon as it reads them must not meet the default action (the end of the process).
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    // SIGUSR1 (logrotate) and SIGTERM/SIGINT likewise: their default action ends the process.
    let reopens = running
        .reopen_logs_on_sigusr1()
        .context("cannot handle SIGUSR1")?;
    let stop = stop_signal();
    if let Some(addr) = running.metrics_addr {
        // Before the listening lines: a script that waits for those knows this one too.
        println!("graygate: metrics on http://{addr}/metrics");
    }
    if let Some(addr) = running.admin_addr {
        // Before the listening lines too; `graygate ctl --addr` takes this URL.
        println!("graygate: admin on http://{addr}");
    }
    for addr in &running.tls_addrs {
        // Before the plain lines: a script that waits for those knows these too.
        println!("graygate: listening on https://{addr}");
    }
    for addr in &running.addrs {
        // A stable line on stdout: scripts and tests read the bound address from it.
        println!("graygate: listening on http://{addr}");
    }
    if let Some(predecessor) = predecessor {
        if let Err(e) = predecessor.ready().await {
            // The old process is gone already (killed): nothing to hand over any more.
            tracing::warn!(error = %e, "upgrade: cannot tell the old process that this one serves");
        }
        tracing::info!(pid = std::process::id(), "upgrade: this new process serves");
    }
    graygate::upgrade::notify_service_manager(graygate::upgrade::ServiceState::Ready);
    let reloader = running.reloader.clone();
    let reloads = tokio::spawn(async move {
        let Ok(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            match reloader.reload(false, "SIGHUP").await {
                Ok(reloaded) => log_reloaded("SIGHUP", &reloaded),
                Err(e) => tracing::error!(error = %ErrorChain(&e), "SIGHUP: nothing reloaded"),
            }
        }
    });
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = usr2.recv() => match running.upgrade(&exe, &args).await {
                Ok(successor) => {
                    let pid = successor.pid().unwrap_or_default();
                    tracing::info!(
                        pid,
                        "upgrade: the new process (pid {pid}) serves; this one stops accepting and finishes its requests"
                    );
                    reloads.abort();
                    reopens.abort();
                    running.hand_over(successor).await;
                    tracing::info!("upgrade: handed over; exiting");
                    return Ok(());
                }
                Err(e) => tracing::error!(
                    error = %ErrorChain(&e),
                    "SIGUSR2: upgrade failed; this process goes on serving"
                ),
            },
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    graygate::upgrade::notify_service_manager(graygate::upgrade::ServiceState::Stopping);
    reloads.abort();
    reopens.abort();
    running.shutdown().await;
    Ok(())
}

async fn import(
    config: config::Config,
    list: String,
    ttl: Option<std::time::Duration>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (store, policy_held) = app::open_store_for_import(&config).await?;
    let config_policy = config.policy.as_ref().map(|p| &p.doc);
    let ip_rule = if policy_held {
        tracing::info!(
            "the embedded policy store is held by a running graygate: the keys are checked against the config's policy"
        );
        graygate::import::ip_rule_of(config_policy, &list)
    } else {
        graygate::import::ip_rule(&*store, config_policy, &list).await?
    };
    let ip_rule = ip_rule.as_deref();
    let (name, written) = match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => {
            let input =
                std::fs::File::open(&f).with_context(|| format!("cannot open {}", f.display()))?;
            let name = f.display().to_string();
            let n = graygate::import::import(
                &*store,
                &list,
                ttl,
                ip_rule,
                std::io::BufReader::new(input),
                &name,
            )
            .await?;
            (name, n)
        }
        None => {
            let n = graygate::import::import(
                &*store,
                &list,
                ttl,
                ip_rule,
                std::io::stdin().lock(),
                "stdin",
            )
            .await?;
            ("stdin".to_string(), n)
        }
    };
    println!("graygate: imported {written} entries from {name} into list `{list}`");
    Ok(())
}

/// `--ttl` of `import`: the TTL bounds of the admin API, as a usage error (exit 2) naming the flag.
fn ttl(text: &str) -> Result<std::time::Duration, String> {
    graygate::store::limits::parse_ttl(text).map_err(|e| e.to_string())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are in place when this returns, not
/// when the future is first polled: a SIGTERM sent as soon as graygate says it serves (a service
/// manager stopping it right after the start) must not meet the default action, which ends the
/// process without finishing its requests.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate());
    let mut int = signal(SignalKind::interrupt());
    async move {
        tokio::select! {
            _ = received(&mut int) => {}
            _ = received(&mut term) => {}
        }
    }
}

/// Completes when `signal` is received; never when its handler could not be installed.
async fn received(signal: &mut std::io::Result<tokio::signal::unix::Signal>) {
    match signal {
        Ok(s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_printed_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("graygate.toml");
        // The config error says `cannot read: <the OS error>` and keeps the OS error as its
        // source: the line has it once.
        let e = anyhow::Error::from(config::load(&missing).unwrap_err());
        let line = error_chain(e.as_ref());
        assert_eq!(
            line,
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn causes_not_in_their_parent_are_appended() {
        let os = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::from(os).context("cannot open list.txt");
        assert_eq!(
            error_chain(e.as_ref()),
            "cannot open list.txt: No such file or directory (os error 2)"
        );
        let e = anyhow::anyhow!("plain");
        assert_eq!(error_chain(e.as_ref()), "plain");
    }
}
