//! `graygate demo`: the whole product in one command, with no external service.
//!
//! Starts two small built-in backends ([`Backend`]: each answers with its name, `stable` or
//! `canary`; the end-to-end tests use the same one), an embedded store in a fresh temporary
//! directory, and graygate in front of them with an example policy: an IP gray list (the nginx +
//! memcached design, on the embedded store), a user-id range rule (the OpenResty + Redis design),
//! a 10% sticky split and a tester override. Then it prints curl commands, each with the version
//! it reaches.
//!
//! [`rollout`] holds the two rollout walkthroughs (`graygate demo rollout [--failing]`): a
//! healthy canary promoted step by step, and a failing one aborted, each in seconds.

use crate::app::{self, StartError};
use crate::config::{
    AdminConfig, AdminToken, Config, PolicySource, StoreConfig, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_RELOAD_INTERVAL, DEFAULT_VERSION_HEADER,
};
use crate::policy::{self, PolicyDoc};
use crate::proxy::{ClientIpConfig, ClientIpMode, ServerConfig, Timeouts, UpstreamConfig};
use crate::store::{CacheConfig, EmbeddedStore, Entry, Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub mod backend;
pub mod rollout;

pub use backend::Backend;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo backend: {0}")]
    Backend(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    /// The admin API did not answer a walkthrough as it should.
    #[error("the admin API at {addr}: {message}")]
    Admin { addr: SocketAddr, message: String },
    /// A `graygate ctl` command of a walkthrough failed; ctl printed why.
    #[error("`{command}` failed")]
    Ctl { command: String },
    /// A walkthrough did not come out as it says it does.
    #[error("{0}")]
    NotAsExpected(String),
    /// Stopped (Ctrl-C, SIGTERM) before the walkthrough ended.
    #[error("stopped before the rollout ended")]
    Interrupted,
}

/// The example policy, in the same TOML an operator writes.
pub const DEMO_POLICY: &str = r#"
[[routes]]
service = "web"

[[services]]
name = "web"
stable = "stable"
versions = { stable = "stable", canary = "canary" }
# Testers: `X-Gray: always` forces the canary, `X-Gray: never` keeps stable.
override = { header = "X-Gray", version = "canary" }

# The nginx + lua + memcached design: a gray list of client IPs, value "1" -> canary.
[[services.rules]]
name = "gray-ips"
version = "canary"
when = { client_ip = true, lookup = { list = "gray_ips" }, equals = "1" }

# The OpenResty + Redis design: user ids in a range go to the canary.
[[services.rules]]
name = "beta-users"
version = "canary"
when = { header = "X-User-Id", range = { start = 1, end = 1000 } }

# Everyone else: 10% of users, sticky by user id; visitors without one are kept on their
# version by a bucket cookie that graygate gives them on their first request.
[services.split]
weights = { canary = 10 }
by = { header = "X-User-Id" }
sticky_cookie = { name = "graygate_bucket", max_age = "1d" }
"#;

/// The name the demo's admin token is recorded under in the history.
pub const DEMO_TOKEN_NAME: &str = "demo";

/// The demo's own traffic, so that the dashboard's charts move: requests a second, user ids
/// cycling through 1..=10000 (about one in five reaches the canary: the range rule and the 10%
/// split), for at most this long.
pub const DEMO_TRAFFIC_RATE: u64 = 50;
pub const DEMO_TRAFFIC_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A token for one run of the demo: 128 random bits in hex.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // No random numbers on this system: a token made from the clock and the process id is
    // still unguessable enough for a loopback demo.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The IP the demo puts on the gray list.
pub const DEMO_GRAY_IP: &str = "10.0.0.7";

/// Runs the demo until `shutdown` completes. `listen` is where graygate listens; if it is taken,
/// a free port is used instead.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let stable = Backend::start("stable").await?;
    let canary = Backend::start("canary").await?;
    let dir = TempDir::new()?;
    let store = Arc::new(EmbeddedStore::open(&dir.0)?);
    store
        .put_entries("gray_ips", &[Entry::new(DEMO_GRAY_IP, "1", None)])
        .await?;

    let doc: PolicyDoc = toml::from_str(DEMO_POLICY).expect("the demo policy parses");
    let mut config = demo_config(listen, &dir.0, stable.addr(), canary.addr(), doc);
    // The admin API (and so the dashboard) with a token, as it should be run: a fresh random one
    // each run, printed below.
    let token = random_token();
    if let Some(admin) = config.admin.as_mut() {
        admin.tokens = vec![AdminToken {
            name: DEMO_TOKEN_NAME.to_string(),
            secret: token.clone(),
        }];
    }
    let running = match app::start(&config, store.clone()).await {
        Ok(r) => r,
        Err(StartError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            config.listen = vec![SocketAddr::new(listen.ip(), 0)];
            eprintln!("graygate demo: {listen} is in use; listening on a free port instead");
            app::start(&config, store.clone()).await?
        }
        Err(e) => return Err(e.into()),
    };
    print_tour(
        running.addrs[0],
        stable.addr(),
        canary.addr(),
        &dir.0,
        running.admin_addr.map(|a| (a, token.as_str())),
    );
    // Some traffic of its own, so that the dashboard's charts move.
    let traffic =
        rollout::Traffic::start(running.addrs[0], DEMO_TRAFFIC_LIMIT, DEMO_TRAFFIC_RATE, 2);
    shutdown.await;
    drop(traffic);
    println!("graygate demo: stopping");
    running.shutdown().await;
    Ok(())
}

fn demo_config(
    listen: SocketAddr,
    dir: &std::path::Path,
    stable: SocketAddr,
    canary: SocketAddr,
    doc: PolicyDoc,
) -> Config {
    let upstream = |name: &str, addr: SocketAddr| UpstreamConfig {
        name: name.to_string(),
        servers: vec![ServerConfig {
            addr: addr.to_string(),
            weight: 1,
        }],
        ..UpstreamConfig::default()
    };
    Config {
        file: PathBuf::from("<demo>"),
        listen: vec![listen],
        store: StoreConfig::Embedded {
            dir: dir.to_path_buf(),
        },
        cache: CacheConfig::default(),
        // curl runs on this machine: trust loopback so that its X-Real-IP header counts, in the
        // original design's order (X-Real-IP, else X-Forwarded-For, else the peer).
        client_ip: ClientIpConfig {
            trusted_proxies: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            mode: ClientIpMode::Original,
            strip_untrusted_forwarded: true,
        },
        timeouts: Timeouts::default(),
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        listen_backlog: crate::config::DEFAULT_LISTEN_BACKLOG,
        max_connections: None,
        history: crate::store::HistoryRetention::default(),
        // The demo's store is new on every run: a snapshot would only ever restore a past run.
        fleet: crate::gateway::FleetOptions::default(),
        upstreams: vec![upstream("stable", stable), upstream("canary", canary)],
        policy: Some(PolicySource {
            doc,
            file: PathBuf::from("<demo>"),
        }),
        reload_interval: DEFAULT_RELOAD_INTERVAL,
        version_header: Some(DEFAULT_VERSION_HEADER),
        workers: None,
        metrics: Default::default(),
        access_log: Default::default(),
        log: Default::default(),
        response_version_header: false,
        // The control plane on a free loopback port; print_tour shows the ctl commands.
        admin: Some(AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: Vec::new(),
            max_connections: crate::proxy::listen::DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_timeout: crate::config::DEFAULT_ADMIN_HEADER_TIMEOUT,
            session_ttl: crate::config::DEFAULT_SESSION_TTL,
        }),
        rollouts: Default::default(),
        tls: None,
        http2: Default::default(),
    }
}

/// The smallest user id above the range rule that the 10% split puts on `canary` (or not).
pub fn demo_split_user(canary: bool) -> u64 {
    (1001..)
        .find(|id| (policy::bucket_of("web", &id.to_string()) < 1000) == canary)
        .expect("some id matches")
}

/// A bucket cookie id (`anon-<n>`) that the 10% split puts on `canary` (or not): what an
/// anonymous visitor's cookie could hold.
pub fn demo_bucket_id(canary: bool) -> String {
    (1..)
        .map(|n| format!("anon-{n}"))
        .find(|id| (policy::bucket_of("web", id) < 1000) == canary)
        .expect("some id matches")
}

fn print_tour(
    addr: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    dir: &std::path::Path,
    admin: Option<(SocketAddr, &str)>,
) {
    let url = format!("http://{addr}/");
    let in_split = demo_split_user(true);
    let out_split = demo_split_user(false);
    let (in_bucket, out_bucket) = (demo_bucket_id(true), demo_bucket_id(false));
    println!("graygate demo: listening on {url}");
    println!(
        "  backends: stable on {stable}, canary on {canary}; embedded store in {}",
        dir.display()
    );
    println!("  gray list `gray_ips`: {DEMO_GRAY_IP} = 1");
    println!();
    println!("Each command prints the version that answered:");
    let tour: [(String, &str, String); 9] = [
        (
            format!("-b graygate_bucket={out_bucket} "),
            "stable",
            "anonymous: this bucket cookie is in the other 90%".into(),
        ),
        (
            format!("-b graygate_bucket={in_bucket} "),
            "canary",
            "anonymous: this bucket cookie is in the sticky 10%".into(),
        ),
        (
            format!("-H 'X-Real-IP: {DEMO_GRAY_IP}' "),
            "canary",
            "rule gray-ips: the IP is on the gray list".into(),
        ),
        (
            format!("-H 'X-Real-IP: 10.0.0.8' -b graygate_bucket={out_bucket} "),
            "stable",
            "10.0.0.8 is not on the gray list".into(),
        ),
        (
            "-H 'X-User-Id: 42' ".into(),
            "canary",
            "rule beta-users: user id in 1..=1000".into(),
        ),
        (
            format!("-H 'X-User-Id: {in_split}' "),
            "canary",
            "split: this user is in the sticky 10%".into(),
        ),
        (
            format!("-H 'X-User-Id: {out_split}' "),
            "stable",
            "split: this user is in the other 90%".into(),
        ),
        (
            "-H 'X-Gray: always' ".into(),
            "canary",
            "tester override forces the canary".into(),
        ),
        (
            "-H 'X-Gray: never' -H 'X-User-Id: 42' ".into(),
            "stable",
            "tester override keeps stable".into(),
        ),
    ];
    for (args, want, why) in tour {
        println!("  curl -s {args}{url}    # -> {want}   ({why})");
    }
    println!();
    println!("A visitor with no user id and no cookie gets a bucket cookie, and keeps its version with it:");
    println!("  curl -s -i {url} | grep -i set-cookie");
    println!();
    if let Some((admin, token)) = admin {
        println!("Watch it live, and drive it, on the dashboard (the demo sends 50 requests a second of its own):");
        println!("  http://{admin}/ui/    sign in with the token {token}");
        println!();
        let ctl = format!("{} --token {token}", ctl_prefix(admin));
        println!("Or through the admin API with graygate ctl (the token is this run's):");
        println!("  {ctl} status");
        println!("  {ctl} list add gray_ips 10.0.0.9 --ttl 1h");
        println!("  {ctl} weights set --service web canary=50");
        println!("  {ctl} explain --ip 10.0.0.9");
        println!("  {ctl} promote --service web");
        println!("  {ctl} rollback --service web");
        println!("  {ctl} history");
        println!();
    }
    println!("Press Ctrl-C to stop.");
}

/// `<this binary> ctl --addr http://<admin>`: the start of every ctl command the demos print,
/// with the binary as it was started (`cargo run` leaves no `graygate` on PATH).
fn ctl_prefix(admin: SocketAddr) -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::env::current_dir().ok().map(|d| (p, d)))
        .map(|(p, d)| {
            p.strip_prefix(&d)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        })
        .unwrap_or_else(|| "graygate".to_string());
    format!("{exe} ctl --addr http://{admin}")
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("graygate-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
