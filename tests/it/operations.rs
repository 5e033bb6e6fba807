//! What operators use: the inbox commands, the sample sender, `config check`, `/metrics` and
//! retention. Commands run as the real binary.

use dsyncd::config::WorkerConfig;
use dsyncd::worker::Worker;
use dsyncd::Role;
use sqlx::PgPool;

use crate::helpers::*;

/// Finishes a pending event with `status`, as if after three attempts that failed with "boom".
async fn set_status(pool: &PgPool, id: &str, status: &str) {
    sqlx::query(
        "WITH gone AS (DELETE FROM workos.inbox_queue WHERE id = $1 RETURNING id)
         INSERT INTO workos.inbox_finished (id, status, attempts, last_error)
         SELECT id, $2, 3, 'boom' FROM gone",
    )
    .bind(id)
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
}

async fn status_of(pool: &PgPool, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM workos.inbox_status WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn send_posts_signed_samples_the_service_accepts(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let url = format!("{}/webhooks/workos", app.address);
    let env = [("WORKOS_WEBHOOK_SECRET", SECRET)];
    let (ok, stdout, stderr) = dsyncd(&pool, &["send", "--list"], &env).await;
    assert!(ok, "{stderr}");
    let types: Vec<&str> = stdout.lines().collect();
    assert!(types.len() >= 11, "{stdout}");
    for event in &types {
        let (ok, stdout, stderr) = dsyncd(&pool, &["send", "--url", &url, *event], &env).await;
        assert!(ok, "{event}: {stdout} {stderr}");
        assert!(stdout.starts_with("200 "), "{stdout}");
    }
    let rows = inbox(&pool).await;
    assert_eq!(rows.len(), types.len(), "one new event per send");
    assert!(rows.iter().any(|row| row.1 == "dsync.group.user_removed"));

    // A given body is sent byte for byte.
    let file = std::env::temp_dir().join(format!("dsyncd-send-{}.json", std::process::id()));
    let pretty = "{\n  \"id\": \"event_from_file\",\n  \"event\": \"dsync.user.created\"\n}";
    std::fs::write(&file, pretty).unwrap();
    let (ok, _, stderr) = dsyncd(
        &pool,
        &["send", "--url", &url, "--file", file.to_str().unwrap()],
        &env,
    )
    .await;
    assert!(ok, "{stderr}");
    let stored: String =
        sqlx::query_scalar("SELECT payload::text FROM workos.inbox WHERE id = 'event_from_file'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, pretty);

    // A wrong secret is refused, and the command says so.
    let (ok, stdout, _) = dsyncd(
        &pool,
        &["send", "--url", &url, "dsync.user.created"],
        &[("WORKOS_WEBHOOK_SECRET", "whsec_wrong")],
    )
    .await;
    assert!(!ok);
    assert!(stdout.starts_with("401 "), "{stdout}");
    app.stop().await;
}

#[sqlx::test]
async fn inbox_commands_show_and_mend_the_inbox(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    for id in ["event_a", "event_b", "event_c"] {
        assert_eq!(app.deliver(&user_created(id)).await.status(), 200);
    }
    app.stop().await;
    set_status(&pool, "event_a", "dead").await;
    set_status(&pool, "event_b", "done").await;

    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "stats"], &[]).await;
    assert!(ok);
    for status in ["dead", "done", "pending"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(status))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert_eq!(line.split_whitespace().nth(1), Some("1"), "{line}");
        assert_eq!(line.split_whitespace().nth(2), Some("webhook"), "{line}");
    }

    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "list", "--status", "dead"], &[]).await;
    assert!(ok);
    assert!(
        stdout.contains("event_a") && stdout.contains("boom") && !stdout.contains("event_b"),
        "{stdout}"
    );

    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "show", "event_a"], &[]).await;
    assert!(ok);
    assert!(
        stdout.contains("status:       dead")
            && stdout.contains("\"email\": \"marcelina.davis@example.com\""),
        "{stdout}"
    );
    // A pending event's turn in the claims: the first of its directory, within its share, so
    // its arrival.
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "show", "event_c"], &[]).await;
    assert!(ok && stdout.contains("status:       pending"), "{stdout}");
    let turn = stdout
        .lines()
        .find_map(|line| line.strip_prefix("turn_at:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let received = stdout
        .lines()
        .find_map(|line| line.strip_prefix("received_at:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(turn.trim(), received.trim(), "{stdout}");
    let (ok, _, stderr) = dsyncd(&pool, &["inbox", "show", "event_missing"], &[]).await;
    assert!(
        !ok && stderr.contains("no event `event_missing`"),
        "{stderr}"
    );

    // retry: only dead or waiting events; a finished one points to replay.
    let (ok, _, stderr) = dsyncd(&pool, &["inbox", "retry", "event_b"], &[]).await;
    assert!(!ok && stderr.contains("replay"), "{stderr}");
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "retry", "event_a"], &[]).await;
    assert!(ok && stdout.contains("requeued 1"), "{stdout}");
    assert_eq!(status_of(&pool, "event_a").await, ("pending".to_owned(), 0));

    set_status(&pool, "event_a", "dead").await;
    set_status(&pool, "event_c", "dead").await;
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "retry", "--dead"], &[]).await;
    assert!(ok && stdout.contains("requeued 2"), "{stdout}");

    // replay: finished events, by id or by directory.
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "replay", "--id", "event_b"], &[]).await;
    assert!(ok && stdout.contains("requeued 1"), "{stdout}");
    assert_eq!(status_of(&pool, "event_b").await, ("pending".to_owned(), 0));
    for id in ["event_a", "event_b", "event_c"] {
        set_status(&pool, id, "done").await;
    }
    let directory = "directory_01ECAZ4NV9QMV47GW873HDCX74";
    let (ok, stdout, _) = dsyncd(
        &pool,
        &["inbox", "replay", "--directory", "directory_other"],
        &[],
    )
    .await;
    assert!(ok && stdout.contains("requeued 0"), "{stdout}");
    let (ok, stdout, _) = dsyncd(
        &pool,
        &[
            "inbox",
            "replay",
            "--directory",
            directory,
            "--since",
            "2000-01-01",
        ],
        &[],
    )
    .await;
    assert!(ok && stdout.contains("requeued 3"), "{stdout}");
    let (ok, _, stderr) = dsyncd(&pool, &["inbox", "replay"], &[]).await;
    assert!(
        !ok && stderr.contains("--id"),
        "a replay needs a filter: {stderr}"
    );
}

#[sqlx::test]
async fn config_check_redacts_secrets_and_names_the_bad_key(pool: PgPool) {
    let env = [("WORKOS_WEBHOOK_SECRET", "whsec_never_printed")];
    let (ok, stdout, _) = dsyncd(&pool, &["config", "check"], &env).await;
    assert!(ok);
    assert!(
        stdout.contains("[redacted]") && !stdout.contains("whsec_never_printed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&database_url(&pool)),
        "the database URL may hold a password"
    );

    let (ok, _, stderr) = dsyncd(&pool, &["config", "check"], &[]).await;
    assert!(!ok && stderr.contains("webhook.secrets"), "{stderr}");
    let bad = [
        ("WORKOS_WEBHOOK_SECRET", "s"),
        ("DSYNCD_WORKER__MAX_ATTEMPTS", "many"),
    ];
    let (ok, _, stderr) = dsyncd(&pool, &["config", "check"], &bad).await;
    assert!(
        !ok && stderr.to_lowercase().contains("worker.max_attempts"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn metrics_count_deliveries_and_show_the_backlog(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), TestApp::config(), Role::Receiver).await;
    let body = user_created("event_metrics");
    app.deliver(&body).await;
    app.deliver(&body).await;
    app.post(body.clone(), None).await;
    app.post(body, Some("t=1, v1=00")).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for line in [
        "dsyncd_deliveries_total{outcome=\"accepted\"} 1",
        "dsyncd_deliveries_total{outcome=\"duplicate\"} 1",
        "dsyncd_deliveries_total{outcome=\"signature_missing\"} 1",
        "dsyncd_deliveries_total{outcome=\"signature_malformed\"} 1",
        "dsyncd_request_duration_seconds_count 4",
        "dsyncd_inbox_depth{status=\"pending\"} 1",
        "dsyncd_inbox_depth{status=\"dead\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("dsyncd_inbox_oldest_pending_seconds "));
    app.stop().await;
}

#[sqlx::test]
async fn retention_deletes_old_finished_rows_and_keeps_dead_ones(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    for id in ["old_done", "old_ignored", "old_dead", "new_done", "pending"] {
        app.deliver(&user_created(id)).await;
    }
    app.stop().await;
    for (id, status) in [
        ("old_done", "done"),
        ("old_ignored", "ignored"),
        ("old_dead", "dead"),
        ("new_done", "done"),
    ] {
        set_status(&pool, id, status).await;
    }
    sqlx::query(
        "UPDATE workos.inbox_finished SET finished_at = now() - interval '31 days'
         WHERE id LIKE 'old_%'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let worker = Worker::new(pool.clone(), WorkerConfig::default());
    assert_eq!(worker.sweep().await.unwrap(), 2);
    let left: Vec<String> = inbox(&pool).await.into_iter().map(|row| row.0).collect();
    assert_eq!(left, vec!["new_done", "old_dead", "pending"]);
    // The expired events' outcomes went with their deliveries.
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT id FROM workos.inbox_finished ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(outcomes, vec!["new_done", "old_dead"]);
}

#[sqlx::test]
async fn serves_https_when_a_certificate_is_configured(pool: PgPool) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("dsyncd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let mut config = TestApp::config();
    config.server.tls = Some(dsyncd::config::TlsConfig {
        cert_path,
        key_path,
    });
    let app = TestApp::spawn_with(pool.clone(), config, Role::Receiver).await;

    let port = app.address.rsplit(':').next().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let body = user_created("event_over_tls");
    let response = client
        .post(format!("https://localhost:{port}/webhooks/workos"))
        .header("WorkOS-Signature", sign_now(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(inbox(&pool).await.len(), 1);
    // Plain HTTP is not served on that port.
    assert!(app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .is_err());
    app.stop().await;
}

#[sqlx::test]
async fn metrics_can_move_to_an_admin_port(pool: PgPool) {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_address = admin.local_addr().unwrap();
    drop(admin);
    let mut config = TestApp::config();
    config.server.metrics_listen = Some(admin_address);
    let app = TestApp::spawn_with(pool, config, Role::All).await;
    let main = app.get("/metrics").await;
    assert_eq!(main.status(), 404);
    let text = app
        .client
        .get(format!("http://{admin_address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("dsyncd_inbox_depth"), "{text}");
    app.stop().await;
}

#[sqlx::test]
async fn healthcheck_exits_zero_only_while_the_service_is_ready(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let url = format!("{}/readyz", app.address);
    let (ok, _, stderr) = dsyncd(&pool, &["healthcheck", "--url", &url], &[]).await;
    assert!(ok, "{stderr}");
    app.stop().await;
    let (ok, _, _) = dsyncd(&pool, &["healthcheck", "--url", &url], &[]).await;
    assert!(!ok, "nothing listens there any more");
}
