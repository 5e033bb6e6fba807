//! Start-up: builds the service from a [`Config`] and runs its roles until shutdown.
//!
//! `main` only parses the command line, loads the configuration and turns signals into a
//! [`CancellationToken`]; everything else starts here, so that tests and embedding
//! applications start the service exactly as the binary does (binding port 0 if they like).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::api::ReadApi;
use crate::config::{Config, ConfigError};
use crate::directory::DirectoryHandler;
use crate::handler::EventHandler;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::receiver::Receiver;
use crate::signature::Verifier;
use crate::worker::Worker;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Which halves of the service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The receiver and the worker.
    All,
    /// Only `POST /webhooks/workos` (and the health endpoints).
    Receiver,
    /// Only the worker (and the health endpoints).
    Worker,
    /// Only the read API (and the health endpoints).
    Api,
}

impl Role {
    fn receives(self) -> bool {
        matches!(self, Role::All | Role::Receiver)
    }

    fn works(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    /// Whether the role serves the read API (`src/api/`).
    fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Receiver | Role::Api)
    }
}

/// A pool for `config`: bounded in size, wait and statement time, so that an unavailable
/// database turns into quick errors instead of hanging requests. It connects lazily.
pub fn connect(config: &Config) -> Result<PgPool, ConfigError> {
    connect_to(config, config.database_url()?, "database.url")
}

/// A pool like [`connect`]'s for the read API's queries: on `database.read_url` when set;
/// `None` when the read API should use the main pool.
pub fn connect_read(config: &Config) -> Result<Option<PgPool>, ConfigError> {
    config
        .database
        .read_url
        .as_ref()
        .map(|url| connect_to(config, url.expose(), "database.read_url"))
        .transpose()
}

fn connect_to(config: &Config, url: &str, key: &'static str) -> Result<PgPool, ConfigError> {
    let timeout = Duration::from_millis(config.database.timeout_ms);
    let options: PgConnectOptions = url.parse().map_err(|_| ConfigError::Invalid {
        key,
        problem: "is not a valid Postgres URL".to_owned(),
    })?;
    let options = options
        .application_name("dsyncd")
        .options([("statement_timeout", config.database.timeout_ms.to_string())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(timeout)
        // No ping before each use: it costs a round trip on every delivery's path, and a
        // broken connection fails the statement anyway (answered 503, retried by WorkOS).
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Applies the migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The service: a pool, the configuration and the handlers the worker runs.
pub struct Service {
    config: Config,
    pool: PgPool,
    /// The read API's pool: `database.read_url`'s, else `pool`.
    read_pool: PgPool,
    handlers: Vec<Arc<dyn EventHandler>>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// Validates `config` and prepares the pool (no connection is made yet). The built-in
    /// directory handler is registered; add your own with [`Service::with_handler`].
    pub fn new(config: Config) -> Result<Service, ConfigError> {
        let pool = connect(&config)?;
        Self::with_pool(config, pool)
    }

    /// Like [`Service::new`], with a pool of the caller's (an embedding application's, or a
    /// test's); `database.url` is not used then (`database.read_url` is, when set).
    pub fn with_pool(config: Config, pool: PgPool) -> Result<Service, ConfigError> {
        config.validate()?;
        let read_pool = connect_read(&config)?.unwrap_or_else(|| pool.clone());
        Ok(Service {
            config,
            pool,
            read_pool,
            handlers: vec![Arc::new(DirectoryHandler)],
            metrics: Metrics::new(),
        })
    }

    /// Adds an event handler next to the built-in one.
    pub fn with_handler(mut self, handler: impl EventHandler) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// The pool the service uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A worker with the service's handlers.
    pub fn worker(&self) -> Worker {
        let worker = Worker::new(self.pool.clone(), self.config.worker.clone())
            .with_metrics(self.metrics.clone());
        self.handlers.iter().fold(worker, |worker, handler| {
            worker.with_shared_handler(handler.clone())
        })
    }

    /// The receiver's routes: `POST /webhooks/workos`, `/healthz` and `/readyz`, to serve or to
    /// merge into an existing axum application (see `examples/embedded.rs`). Each call starts a
    /// group-commit writer, which stops once the router is dropped. `/metrics` is
    /// [`Service::metrics_router`].
    pub fn router(&self) -> Router {
        self.receiver().router()
    }

    fn receiver(&self) -> Receiver {
        let (ingest, _writer) =
            Ingest::start(self.pool.clone(), &self.config, self.metrics.clone());
        let verifier = Verifier::new(&self.config.webhook.secrets, self.config.tolerance());
        Receiver::new(
            verifier,
            ingest,
            self.pool.clone(),
            self.config.server.body_limit_bytes,
            Duration::from_millis(self.config.server.request_timeout_ms),
            self.metrics.clone(),
        )
    }

    /// The read API's routes (`GET /directories`, `/directory_users`, `/directory_groups`),
    /// on the read pool, to serve or to merge into an existing axum application.
    pub fn api_router(&self) -> Router {
        ReadApi::new(
            self.read_pool.clone(),
            &self.config.api,
            self.metrics.clone(),
        )
        .router()
    }

    /// `GET /metrics`, reporting this service's receiver and worker.
    pub fn metrics_router(&self) -> Router {
        Receiver::metrics_router(self.metrics.clone(), self.pool.clone())
    }

    /// Binds `server.listen` and runs until `shutdown`.
    pub async fn run(self, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.config.server.listen).await?;
        self.run_on(listener, role, shutdown).await
    }

    /// Runs `role` on `listener` until `shutdown`: stops accepting, lets in-flight requests and
    /// the batch in flight finish within their grace periods, and returns.
    pub async fn run_on(
        self,
        listener: TcpListener,
        role: Role,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.check_schema().await?;
        tracing::info!(address = %listener.local_addr()?, ?role, "dsyncd listening");

        // The webhook route is merged after the layers (`layers`), which it does without.
        let webhook = role.receives().then(|| self.receiver().webhook_router());
        let mut router = Receiver::health_router(self.pool.clone());
        let metrics = self.metrics_router();
        let admin = match self.config.server.metrics_listen {
            Some(address) => {
                let admin = TcpListener::bind(address).await?;
                tracing::info!(address = %admin.local_addr()?, "metrics listening");
                Some(self.serve(admin, metrics, &shutdown).await?)
            }
            None => {
                router = router.merge(metrics);
                None
            }
        };
        // The read API: next to the webhook route, or on `api.listen`.
        let mut api_server = None;
        if role.serves_api() {
            let api = self.api_router();
            match self.config.api.listen {
                Some(address) => {
                    let api_listener = TcpListener::bind(address).await?;
                    tracing::info!(address = %api_listener.local_addr()?, "read API listening");
                    let api = self.layers_with(api, crate::api::not_found);
                    api_server = Some(self.serve(api_listener, api, &shutdown).await?);
                }
                None => router = router.merge(api),
            }
        }
        let mut router = self.layers(router);
        if let Some(webhook) = webhook {
            router = router.merge(webhook);
        }
        let main = self.serve(listener, router, &shutdown).await?;
        let worker = role
            .works()
            .then(|| tokio::spawn(self.worker().run(shutdown.clone())));
        // Reconciliation (src/reconcile/) runs in the worker role, when an API key is set.
        let reconciler = role.works().then(|| {
            crate::reconcile::start(
                &self.config,
                self.pool.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            )
        });
        for server in std::iter::once(main).chain(admin).chain(api_server) {
            if let Err(error) = server.await? {
                tracing::error!(error = %error, "the HTTP server failed");
            }
        }
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        if let Some(reconciler) = reconciler.flatten() {
            let _ = reconciler.await;
        }
        tracing::info!("dsyncd stopped");
        Ok(())
    }

    /// Serves `router` on `listener` (HTTPS when a certificate is configured) until
    /// `shutdown`; then stops accepting and gives open requests `server.shutdown_grace_ms`
    /// before closing their connections.
    async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
        let handle = axum_server::Handle::new();
        let grace = Duration::from_millis(self.config.server.shutdown_grace_ms);
        let stopping = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stopping.graceful_shutdown(Some(grace));
        });
        // The request timeout starts once the headers are in. The idle timeout bounds the wait
        // for them, so that slow or idle clients cannot hold connections: on a new connection
        // until its first request, and for the headers of every request after it.
        let idle_timeout = Duration::from_millis(self.config.server.idle_timeout_ms);
        let mut server = axum_server::from_tcp(listener.into_std()?)?
            .handle(handle)
            .first_request_timeout(idle_timeout);
        server
            .http_builder()
            .http1()
            .header_read_timeout(idle_timeout);
        let service = router.into_make_service();
        let task = match &self.config.server.tls {
            Some(tls) => {
                let rustls = RustlsConfig::from_pem_file(&tls.cert_path, &tls.key_path)
                    .await
                    .with_context(|| {
                        format!(
                            "loading server.tls ({} and {})",
                            tls.cert_path.display(),
                            tls.key_path.display()
                        )
                    })?;
                tokio::spawn(server.acceptor(RustlsAcceptor::new(rustls)).serve(service))
            }
            None => tokio::spawn(server.serve(service)),
        };
        Ok(task)
    }

    fn layers(&self, router: Router) -> Router {
        self.layers_with(router, crate::receiver::not_found)
    }

    /// The timeout and trace layers, with `fallback` for paths that are not routes. (The
    /// webhook route has its own: `receiver`.)
    fn layers_with<H, T>(&self, router: Router, fallback: H) -> Router
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        let timeout = Duration::from_millis(self.config.server.request_timeout_ms);
        router
            .fallback(fallback)
            .layer(axum::middleware::from_fn(move |request, next| {
                crate::receiver::with_timeout(timeout, request, next)
            }))
            .layer(TraceLayer::new_for_http())
    }

    /// Refuses to start on a database that lacks migrations; starts anyway if the database
    /// cannot be reached now (it may come up after us), since every request then gets 503.
    async fn check_schema(&self) -> anyhow::Result<()> {
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await;
        match applied {
            Ok(applied) => {
                let missing = MIGRATOR
                    .iter()
                    .filter(|migration| !applied.contains(&migration.version))
                    .count();
                anyhow::ensure!(
                    missing == 0,
                    "the database lacks {missing} migration(s): run `dsyncd migrate` first"
                );
                Ok(())
            }
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
                anyhow::bail!("the database has no dsyncd tables: run `dsyncd migrate` first")
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot reach the database yet; starting anyway");
                Ok(())
            }
        }
    }
}
