//! dsyncd inside an existing axum application: the receiver's routes merged into the app's
//! router, and the worker running next to it, sharing the app's pool.
//!
//! ```sh
//! export DATABASE_URL=postgres://… WORKOS_WEBHOOK_SECRET=whsec_…
//! cargo run --example embedded   # then POST to http://127.0.0.1:3000/webhooks/workos
//! ```

use axum::routing::get;
use axum::Router;
use dsyncd::config::Config;
use dsyncd::Service;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    // The application's own pool and configuration; dsyncd's part of it comes from the same
    // file or environment as the binary's.
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&std::env::var("DATABASE_URL")?)
        .await?;
    let config = Config::load(None)?;
    let service = Service::with_pool(config, pool.clone())?;
    dsyncd::app::migrate(&pool).await?;

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(service.worker().run(shutdown.clone()));

    let app = Router::new()
        .route("/", get(|| async { "the application's own routes" }))
        .merge(service.router())
        .merge(service.metrics_router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await?;
    // Let the worker finish its batch before the process exits.
    worker.await?;
    Ok(())
}
