//! Starting the service for a test, signing deliveries, and reading the fixtures.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dsyncd::config::{Config, Secret};
use dsyncd::{Role, Service};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::format::FmtSpan;

/// The secret the fixtures' signatures were made with.
pub const SECRET: &str = "whsec_test_secret";

/// A running service on a loopback port.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// The test configuration: the fixtures' secret, quick timeouts.
    pub fn config() -> Config {
        let mut config = Config::default();
        config.webhook.secrets = vec![Secret::new(SECRET)];
        config.database.timeout_ms = 1_000;
        config.server.shutdown_grace_ms = 5_000;
        config
    }

    /// Starts `role` with `config` on `pool`.
    pub async fn spawn_with(pool: PgPool, config: Config, role: Role) -> TestApp {
        let service = Service::with_pool(config, pool).expect("valid test configuration");
        Self::spawn_service(service, role).await
    }

    /// Starts the receiver alone, so that tests see the inbox as the receiver left it.
    pub async fn receiver(pool: PgPool) -> TestApp {
        Self::spawn_with(pool, Self::config(), Role::Receiver).await
    }

    /// Starts an already built service.
    pub async fn spawn_service(service: Service, role: Role) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run_on(listener, role, shutdown.clone()));
        TestApp {
            address,
            client: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    /// Posts `body` to the webhook path with `signature` as the header (if any).
    pub async fn post(
        &self,
        body: impl Into<Vec<u8>>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/workos", self.address))
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(signature) = signature {
            request = request.header("WorkOS-Signature", signature);
        }
        request.send().await.expect("the service answers")
    }

    /// `GET path` on the service.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the service answers")
    }

    /// Posts `body` signed now with the test secret.
    pub async fn deliver(&self, body: &str) -> reqwest::Response {
        self.post(body.to_owned(), Some(&sign_now(body))).await
    }

    /// Stops the service and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The header WorkOS would send for `body` now.
pub fn sign_now(body: &str) -> String {
    dsyncd::signature::sign(&Secret::new(SECRET), now_ms(), body.as_bytes())
}

/// `samples/…`: the WorkOS example bodies, one per event type.
pub fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

/// `tests/fixtures/…`
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An example body from `samples/`, without the file's trailing newline.
pub fn fixture(name: &str) -> String {
    let text = std::fs::read_to_string(sample_path(name)).unwrap();
    text.trim_end_matches('\n').to_owned()
}

/// A `dsync.user.created` body with a fresh id.
pub fn user_created(id: &str) -> String {
    fixture("dsync.user.created.json").replace("event_01HZ0000000000000000000002", id)
}

/// The inbox rows as (id, event, payload text, status).
pub async fn inbox(pool: &PgPool) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "SELECT s.id, s.event, i.payload, s.status
         FROM workos.inbox_status AS s JOIN workos.inbox AS i ON i.id = s.id ORDER BY s.id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The URL of the test's own database (the one `pool` connects to).
/// How many events wait in the queue (one row per unfinished event).
pub async fn queued(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM workos.inbox_queue")
        .fetch_one(pool)
        .await
        .unwrap()
}

pub fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options
            .get_database()
            .expect("sqlx::test names the database")
    )
}

/// Runs the `dsyncd` binary with `args` against the test's database; returns (success,
/// stdout, stderr).
pub async fn dsyncd(pool: &PgPool, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dsyncd"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env_remove("WORKOS_WEBHOOK_SECRET")
        .env_remove("DSYNCD_CONFIG")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Polls `condition` every 50 ms until it holds (true) or `deadline` passes (false).
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Everything the subscriber writes, shared with the test.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Captures everything logged on this thread, at every level, while the guard lives.
pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Another test's thread may have met a callsite first, while no subscriber wanted it, and
    // tracing caches that "never": recompute every callsite's interest with this one in place.
    tracing::callsite::rebuild_interest_cache();
    (captured, guard)
}
