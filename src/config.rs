//! Configuration: one typed struct, layered defaults < file < environment, validated once at
//! start-up with errors that name the key.
//!
//! Every key, its default and its environment name are documented in `config.example.toml`.
//! Some environment names are fixed because users and tests rely on them: `DATABASE_URL`,
//! `WORKOS_WEBHOOK_SECRET` (comma-separated while a secret is rotated), `DSYNCD_LISTEN`, and
//! `WORKOS_API_KEY` and `WORKOS_BASE_URL` (the names the WorkOS SDKs read).
//! Any other key can be set as `DSYNCD_<SECTION>__<KEY>`, e.g. `DSYNCD_WORKER__BATCH_SIZE=200`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

/// A value that must never be printed: `Debug` and `Serialize` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// Webhook verification.
    pub webhook: WebhookConfig,
    /// The Postgres connection.
    pub database: DatabaseConfig,
    /// The group-commit writer behind the receiver.
    pub ingest: IngestConfig,
    /// The worker that drains the inbox.
    pub worker: WorkerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
    /// The WorkOS API (reconciliation's client).
    pub workos: WorkosConfig,
    /// Reconciliation: the Events API tail and snapshot reconciliation.
    pub reconcile: ReconcileConfig,
    /// The read API (`src/api/`).
    pub api: ApiConfig,
}

/// `[workos]`: the WorkOS REST API, which reconciliation reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkosConfig {
    /// The API key (`WORKOS_API_KEY`, `sk_…`). Without it reconciliation is off.
    pub api_key: Option<Secret>,
    /// The API's base URL (`WORKOS_BASE_URL`).
    pub base_url: String,
    /// Longest wait for one API answer; a slower one is retried like a 5xx.
    pub timeout_ms: u64,
    /// Attempts at one request before giving up (429, 5xx, timeouts).
    pub max_attempts: u32,
    /// First delay between attempts; it doubles with each one (a 429's `Retry-After` wins).
    pub backoff_base_ms: u64,
}

impl Default for WorkosConfig {
    fn default() -> Self {
        WorkosConfig {
            api_key: None,
            base_url: "https://api.workos.com".to_owned(),
            timeout_ms: 10_000,
            max_attempts: 5,
            backoff_base_ms: 500,
        }
    }
}

/// `[reconcile]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Pause between Events API polls once the tail has caught up.
    pub events_interval_secs: u64,
    /// A cursor older than this is not trusted (WorkOS keeps 30 days of events): a snapshot
    /// reconciliation runs and the tail restarts from it.
    pub cursor_max_age_days: u32,
    /// How often a snapshot reconciliation runs; 0 turns the periodic one off.
    pub snapshot_interval_secs: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            events_interval_secs: 60,
            cursor_max_age_days: 25,
            snapshot_interval_secs: 86_400,
        }
    }
}

// ---- [api]: the read API ----

/// `[api]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Keys an app must send as `Authorization: Bearer <key>`; none means no authentication
    /// (`DSYNCD_API__KEYS`, comma-separated plain keys).
    #[serde(deserialize_with = "api_keys")]
    pub keys: Vec<ApiKey>,
    /// Serve the read API on this address instead of the main one.
    pub listen: Option<SocketAddr>,
}

/// One entry of `api.keys`: a plain key in the file or the environment, or a table
/// `{ key = "…", organization_ids = ["org_…"] }` limiting the key to those organizations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key itself.
    pub key: Secret,
    /// The organizations whose directories the key may read; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_ids: Option<Vec<String>>,
}

/// Accepts a list of strings and tables (file) or `"a,b"` (environment).
fn api_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ApiKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Plain(String),
        Limited(ApiKey),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<Entry>),
        String(String),
    }
    let entries = match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(|key| key.trim())
            .filter(|key| !key.is_empty())
            .map(|key| Entry::Plain(key.to_owned()))
            .collect(),
    };
    Ok(entries
        .into_iter()
        .map(|entry| match entry {
            Entry::Plain(key) => ApiKey {
                key: Secret(key.trim().to_owned()),
                organization_ids: None,
            },
            Entry::Limited(key) => key,
        })
        .collect())
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for key in &self.keys {
            if key.key.expose().trim().is_empty() {
                return invalid("api.keys", "has an empty key");
            }
            if key
                .organization_ids
                .as_ref()
                .is_some_and(|ids| ids.is_empty() || ids.iter().any(|id| id.trim().is_empty()))
            {
                return invalid(
                    "api.keys",
                    "has a key whose organization_ids is empty or holds an empty id \
                     (leave organization_ids out for a key that sees every organization)",
                );
            }
        }
        let mut keys: Vec<&str> = self.keys.iter().map(|key| key.key.expose()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|pair| pair[0] == pair[1]) {
            return invalid("api.keys", "lists the same key twice");
        }
        Ok(())
    }
}

// ---- end of [api] ----

/// `[runtime]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads running the service's tasks.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (`DSYNCD_LISTEN`).
    pub listen: SocketAddr,
    /// Largest accepted request body; larger ones get 413.
    pub body_limit_bytes: usize,
    /// A request (body included) taking longer than this gets 408, so slow clients cannot
    /// hold connections.
    pub request_timeout_ms: u64,
    /// How long a connection may wait for a request's headers: idle kept-alive connections
    /// and clients that send headers slowly are closed after it.
    pub idle_timeout_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Serve `GET /metrics` on this address instead of the main one.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain.
    pub cert_path: PathBuf,
    /// PEM file with the private key.
    pub key_path: PathBuf,
}

/// `[webhook]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Endpoint secrets from the WorkOS dashboard (`WORKOS_WEBHOOK_SECRET`, comma-separated).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between the signature's timestamp and now, either way.
    pub tolerance_secs: u64,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Postgres URL (`DATABASE_URL`).
    pub url: Option<Secret>,
    /// Connections in the pool of one process.
    pub max_connections: u32,
    /// Longest wait for a connection, and longest statement; past it the receiver answers 503.
    pub timeout_ms: u64,
    /// Postgres URL of a replica for the read API's queries; the main pool when absent.
    pub read_url: Option<Secret>,
}

/// `[ingest]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most deliveries written in one commit.
    pub max_batch: usize,
    /// Deliveries that may wait for a commit; past it the receiver answers 503.
    pub queue_capacity: usize,
    /// Deliveries a second of one directory that keep their arrival order in the claims; the
    /// rest of a faster burst is claimed after other directories' events that arrive meanwhile.
    pub directory_share_per_sec: u32,
}

/// `[worker]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Events claimed and applied in one transaction.
    pub batch_size: u32,
    /// Batches applied at once by one process, each on a connection of its own.
    pub concurrency: u32,
    /// How long a batch may sit idle in its transaction (a handler stuck outside the database)
    /// before Postgres ends the session and its events are claimed again; also the longest
    /// statement of a batch (`database.timeout_ms` bounds the receiver's).
    pub lease_secs: u64,
    /// Polling interval when no notification arrives.
    pub poll_interval_ms: u64,
    /// Attempts before an event is `dead`.
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_secs: u64,
    /// How long in-flight batches may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// `done` and `ignored` rows older than this are deleted; `dead` rows stay.
    pub retention_days: u32,
    /// How often a worker deletes expired rows (and once at start).
    pub retention_interval_secs: u64,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// Filter directives when `RUST_LOG` is not set, e.g. `info,dsyncd=debug`.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            shutdown_grace_ms: 10_000,
            metrics_listen: None,
            tls: None,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secrets: Vec::new(),
            tolerance_secs: 180,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 8,
            timeout_ms: 2_000,
            read_url: None,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 512,
            queue_capacity: 8192,
            directory_share_per_sec: 1000,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 1000,
            concurrency: 2,
            lease_secs: 60,
            poll_interval_ms: 1_000,
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_secs: 3_600,
            shutdown_grace_ms: 20_000,
            retention_days: 30,
            retention_interval_secs: 600,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment does not fit the configuration's types.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of its range, or a required value is missing.
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid {
        /// The offending key, e.g. `worker.batch_size`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(PathBuf::from(file)));
        }
        figment
            // Only `DSYNCD_<SECTION>__<KEY>`: other `DSYNCD_…` names are not ours (Kubernetes,
            // for one, sets `DSYNCD_PORT` and friends for a service named dsyncd).
            .merge(
                Env::prefixed("DSYNCD_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database.url".into()),
            )
            .merge(
                Env::raw()
                    .only(&["WORKOS_WEBHOOK_SECRET"])
                    .map(|_| "webhook.secrets".into()),
            )
            .merge(
                Env::raw()
                    .only(&["DSYNCD_LISTEN"])
                    .map(|_| "server.listen".into()),
            )
            .merge(
                Env::raw()
                    .only(&["WORKOS_API_KEY"])
                    .map(|_| "workos.api_key".into()),
            )
            .merge(
                Env::raw()
                    .only(&["WORKOS_BASE_URL"])
                    .map(|_| "workos.base_url".into()),
            )
    }

    /// The WorkOS API key, if reconciliation is on (an empty value counts as unset).
    pub fn workos_api_key(&self) -> Option<&Secret> {
        self.workos
            .api_key
            .as_ref()
            .filter(|key| !key.expose().trim().is_empty())
    }

    /// The database URL, or an error naming the key.
    pub fn database_url(&self) -> Result<&str, ConfigError> {
        self.database
            .url
            .as_ref()
            .map(Secret::expose)
            .ok_or_else(|| ConfigError::Invalid {
                key: "database.url",
                problem: "is not set (set DATABASE_URL)".to_owned(),
            })
    }

    /// Checks what the types cannot: ranges, and the secrets the service needs to run. (The
    /// database URL is checked where a pool is made: an embedding application may bring its
    /// own pool.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.webhook.secrets.iter().all(|s| s.expose().is_empty()) {
            return invalid(
                "webhook.secrets",
                "is empty (set WORKOS_WEBHOOK_SECRET to the endpoint secret from the WorkOS dashboard)",
            );
        }
        let positive: [(&'static str, u64); 16] = [
            (
                "server.body_limit_bytes",
                self.server.body_limit_bytes as u64,
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            (
                "database.max_connections",
                self.database.max_connections.into(),
            ),
            ("database.timeout_ms", self.database.timeout_ms),
            ("ingest.max_batch", self.ingest.max_batch as u64),
            ("ingest.queue_capacity", self.ingest.queue_capacity as u64),
            (
                "ingest.directory_share_per_sec",
                self.ingest.directory_share_per_sec.into(),
            ),
            ("worker.batch_size", self.worker.batch_size.into()),
            ("worker.concurrency", self.worker.concurrency.into()),
            ("worker.lease_secs", self.worker.lease_secs),
            ("worker.poll_interval_ms", self.worker.poll_interval_ms),
            ("worker.max_attempts", self.worker.max_attempts.into()),
            ("worker.retention_days", self.worker.retention_days.into()),
            ("runtime.worker_threads", self.runtime.worker_threads as u64),
            (
                "worker.retention_interval_secs",
                self.worker.retention_interval_secs,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.database.max_connections < 2 {
            return invalid("database.max_connections", "must be at least 2");
        }
        self.validate_workos()?;
        self.api.validate()
    }

    /// Checks the `[workos]` and `[reconcile]` keys alone (for `dsyncd reconcile`, which
    /// needs no webhook secret).
    pub fn validate_workos(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("workos.timeout_ms", self.workos.timeout_ms),
            ("workos.max_attempts", self.workos.max_attempts.into()),
            ("workos.backoff_base_ms", self.workos.backoff_base_ms),
            (
                "reconcile.events_interval_secs",
                self.reconcile.events_interval_secs,
            ),
            (
                "reconcile.cursor_max_age_days",
                self.reconcile.cursor_max_age_days.into(),
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        let base_url = &self.workos.base_url;
        if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
            || reqwest::Url::parse(base_url).is_err()
        {
            return invalid(
                "workos.base_url",
                "is not an http(s) URL (set WORKOS_BASE_URL, e.g. https://api.workos.com)",
            );
        }
        Ok(())
    }

    /// `webhook.tolerance_secs` as a duration.
    pub fn tolerance(&self) -> Duration {
        Duration::from_secs(self.webhook.tolerance_secs)
    }
}

fn invalid(key: &'static str, problem: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    })
}

/// Accepts `["a", "b"]` (file) or `"a,b"` (environment).
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    let values = match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(values
        .into_iter()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .map(Secret)
        .collect())
}

#[cfg(test)]
// figment's test jail returns its large error type from every closure.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_then_file_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "dsyncd.toml",
                "[worker]\nbatch_size = 100\nlease_secs = 5\n[webhook]\nsecrets = [\"file\"]\n",
            )?;
            jail.set_env("DSYNCD_WORKER__BATCH_SIZE", "200");
            jail.set_env("WORKOS_WEBHOOK_SECRET", "old, new");
            jail.set_env("DSYNCD_LISTEN", "127.0.0.1:9000");
            jail.set_env("DATABASE_URL", "postgres://localhost/db");
            let config = Config::load(Some(Path::new("dsyncd.toml"))).unwrap();
            assert_eq!(config.worker.batch_size, 200);
            assert_eq!(config.worker.lease_secs, 5);
            assert_eq!(config.worker.max_attempts, 10);
            assert_eq!(
                config.webhook.secrets,
                vec![Secret::new("old"), Secret::new("new")]
            );
            assert_eq!(config.server.listen.to_string(), "127.0.0.1:9000");
            assert_eq!(config.database_url().unwrap(), "postgres://localhost/db");
            config.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("DSYNCD_LISTEN", "not an address");
            let error = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(error.contains("server.listen"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[worker]\nbatch_sise = 1\n")?;
            let error = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("batch_sise"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://x/y");
            jail.set_env("WORKOS_WEBHOOK_SECRET", "s");
            jail.set_env("DSYNCD_WORKER__BATCH_SIZE", "0");
            let error = Config::load(None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("worker.batch_size"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn other_dsyncd_variables_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("DSYNCD_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("DSYNCD_SERVICE_HOST", "10.0.0.1");
            jail.set_env("DSYNCD_CONFIG", "/etc/dsyncd.toml");
            let config = Config::load(None).unwrap();
            assert_eq!(config.server.listen.port(), 8080);
            // A misspelt key of a real section is still an error.
            jail.set_env("DSYNCD_WORKER__BATCH_SIZ", "1");
            let error = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(error.contains("batch_siz"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn the_workos_api_is_configured_by_the_sdk_names() {
        Jail::expect_with(|jail| {
            assert!(Config::load(None).unwrap().workos_api_key().is_none());
            jail.set_env("WORKOS_API_KEY", "sk_test_do_not_print");
            jail.set_env("WORKOS_BASE_URL", "http://127.0.0.1:9999");
            jail.set_env("DSYNCD_RECONCILE__SNAPSHOT_INTERVAL_SECS", "0");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.workos_api_key().map(Secret::expose),
                Some("sk_test_do_not_print")
            );
            assert_eq!(config.workos.base_url, "http://127.0.0.1:9999");
            assert_eq!(config.reconcile.snapshot_interval_secs, 0);
            assert!(!format!("{config:?}").contains("do_not_print"));
            jail.set_env("WORKOS_API_KEY", " ");
            assert!(Config::load(None).unwrap().workos_api_key().is_none());
            jail.set_env("WORKOS_WEBHOOK_SECRET", "s");
            jail.set_env("WORKOS_BASE_URL", "api.workos.com");
            let error = Config::load(None).unwrap().validate().unwrap_err();
            assert!(error.to_string().contains("workos.base_url"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_secret_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://x/y");
            let error = Config::load(None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("webhook.secrets") && error.contains("WORKOS_WEBHOOK_SECRET"));
            Ok(())
        });
    }

    #[test]
    fn the_example_file_shows_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let example: toml::Value =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        // The example leaves the required URL commented out; everything else is its default.
        assert_eq!(example, defaults);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# url = "));
    }

    #[test]
    fn api_keys_come_plain_or_limited_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "dsyncd.toml",
                "[api]\nkeys = [\"plain\", { key = \"limited\", organization_ids = [\"org_1\"] }]\n",
            )?;
            let config = Config::load(Some(Path::new("dsyncd.toml"))).unwrap();
            assert_eq!(
                config.api.keys,
                vec![
                    ApiKey {
                        key: Secret::new("plain"),
                        organization_ids: None
                    },
                    ApiKey {
                        key: Secret::new("limited"),
                        organization_ids: Some(vec!["org_1".to_owned()])
                    },
                ]
            );
            jail.set_env("DSYNCD_API__KEYS", "a, b");
            let config = Config::load(Some(Path::new("dsyncd.toml"))).unwrap();
            let keys: Vec<&str> = config.api.keys.iter().map(|k| k.key.expose()).collect();
            assert_eq!(keys, ["a", "b"]);
            assert!(config.api.keys.iter().all(|k| k.organization_ids.is_none()));
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("WORKOS_WEBHOOK_SECRET", "s");
            jail.create_file(
                "bad.toml",
                "[api]\nkeys = [{ key = \"k\", organization_ids = [] }]\n",
            )?;
            let error = Config::load(Some(Path::new("bad.toml")))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("api.keys"), "{error}");
            jail.create_file("twice.toml", "[api]\nkeys = [\"k\", \"k\"]\n")?;
            let error = Config::load(Some(Path::new("twice.toml")))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("api.keys"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        Jail::expect_with(|jail| {
            jail.set_env("WORKOS_WEBHOOK_SECRET", "whsec_do_not_print");
            jail.set_env("DATABASE_URL", "postgres://user:pw_do_not_print@db/x");
            jail.set_env(
                "DSYNCD_DATABASE__READ_URL",
                "postgres://u:pw_do_not_print@replica/x",
            );
            jail.set_env("DSYNCD_API__KEYS", "sk_do_not_print");
            let config = Config::load(None).unwrap();
            let debug = format!("{config:?}");
            let toml = serde_json::to_string(&config).unwrap();
            for shown in [debug, toml] {
                assert!(!shown.contains("do_not_print"), "{shown}");
                assert!(shown.contains("[redacted]"));
            }
            Ok(())
        });
    }
}
