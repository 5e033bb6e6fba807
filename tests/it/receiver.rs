//! `POST /webhooks/workos` and the health endpoints, over a real socket, on a real Postgres.

use std::time::{Duration, Instant};

use dsyncd::config::Secret;
use dsyncd::{Role, Service};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body["error"].as_str().unwrap().to_owned())
}

#[sqlx::test]
async fn a_signed_event_is_stored_exactly_as_received_before_the_200(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let body = fixture("dsync.user.created.json");
    let response = app.deliver(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "accepted"
    );
    let rows = inbox(&pool).await;
    assert_eq!(
        rows,
        vec![(
            "event_01HZ0000000000000000000002".to_owned(),
            "dsync.user.created".to_owned(),
            body,
            "pending".to_owned()
        )]
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_pretty_printed_body_verifies_as_sent_and_is_kept_byte_for_byte(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let compact: Value = serde_json::from_str(&fixture("dsync.group.created.json")).unwrap();
    let pretty = serde_json::to_string_pretty(&compact).unwrap();
    assert_eq!(app.deliver(&pretty).await.status(), 200);
    assert_eq!(inbox(&pool).await[0].2, pretty);
    app.stop().await;
}

#[sqlx::test]
async fn a_redelivery_answers_200_and_stores_nothing_more(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let body = fixture("dsync.user.created.json");
    assert_eq!(
        app.deliver(&body).await.json::<Value>().await.unwrap()["status"],
        "accepted"
    );
    let again = app.deliver(&body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    assert_eq!(inbox(&pool).await.len(), 1);
    assert_eq!(queued(&pool).await, 1, "one event to apply, not two");
    app.stop().await;
}

#[sqlx::test]
async fn new_and_stored_events_arriving_together_are_each_answered_for_what_they_are(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let ids: Vec<String> = (0..40).map(|n| format!("event_mixed_{n:02}")).collect();
    for id in ids.iter().step_by(4) {
        assert_eq!(app.deliver(&user_created(id)).await.status(), 200);
    }
    // Retries of the stored ones arrive among new events, in the same commits where they meet.
    let answers = futures_util::future::join_all(ids.iter().map(|id| {
        let body = user_created(id);
        let app = &app;
        async move {
            let answer = app.deliver(&body).await;
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.unwrap()["status"].clone()
        }
    }))
    .await;
    for (n, status) in answers.iter().enumerate() {
        let expected = if n % 4 == 0 { "duplicate" } else { "accepted" };
        assert_eq!(status, expected, "{}", ids[n]);
    }
    // And new events after them are stored as usual.
    let answer = app.deliver(&user_created("event_mixed_after")).await;
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "accepted");
    assert_eq!(inbox(&pool).await.len(), 41);
    assert_eq!(queued(&pool).await, 41);
    app.stop().await;
}

#[sqlx::test]
async fn every_event_type_is_stored_dsync_or_not(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let names: Vec<String> = std::fs::read_dir(sample_path(""))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    for name in &names {
        assert_eq!(app.deliver(&fixture(name)).await.status(), 200, "{name}");
    }
    let events: Vec<String> = inbox(&pool).await.into_iter().map(|row| row.1).collect();
    assert_eq!(events.len(), names.len());
    assert!(events.contains(&"connection.activated".to_owned()));
    assert!(events.contains(&"dsync.token.created".to_owned()));
    assert!(events.contains(&"dsync.deactivated".to_owned()));
    app.stop().await;
}

#[sqlx::test]
async fn signature_problems_are_401_and_store_nothing(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let body = fixture("dsync.user.created.json");
    let now = now_ms();
    let sign_at = |t: u64| dsyncd::signature::sign(&Secret::new(SECRET), t, body.as_bytes());
    let wrong_secret = dsyncd::signature::sign(&Secret::new("whsec_other"), now, body.as_bytes());
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "signature_missing"),
        (Some("nonsense".to_owned()), "signature_malformed"),
        (Some(format!("t={now}, v1=xyz")), "signature_malformed"),
        (Some(wrong_secret), "signature_mismatch"),
        (Some(sign_at(now - 181_000)), "signature_expired"),
        (Some(sign_at(now + 181_000)), "signature_expired"),
    ];
    for (header, expected) in cases {
        let response = app.post(body.clone(), header.as_deref()).await;
        assert_eq!(error_of(response).await, (401, expected.to_owned()));
    }
    // Signed for another body.
    let tampered = body.replace("Marcelina", "Mallory");
    let response = app.post(tampered, Some(&sign_at(now))).await;
    assert_eq!(
        error_of(response).await,
        (401, "signature_mismatch".to_owned())
    );
    assert!(inbox(&pool).await.is_empty());
    app.stop().await;
}

#[sqlx::test]
async fn timestamps_within_the_tolerance_are_accepted_both_ways(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    for (id, offset) in [("event_past", -170_000i64), ("event_future", 170_000)] {
        let body = user_created(id);
        let t = (now_ms() as i64 + offset) as u64;
        let header = dsyncd::signature::sign(&Secret::new(SECRET), t, body.as_bytes());
        assert_eq!(app.post(body, Some(&header)).await.status(), 200, "{id}");
    }
    assert_eq!(inbox(&pool).await.len(), 2);
    app.stop().await;
}

#[sqlx::test]
async fn during_a_rotation_both_secrets_are_accepted(pool: PgPool) {
    let mut config = TestApp::config();
    config.webhook.secrets = vec![Secret::new("whsec_old"), Secret::new("whsec_new")];
    let app = TestApp::spawn_with(pool.clone(), config, Role::Receiver).await;
    for (id, secret) in [("event_old", "whsec_old"), ("event_new", "whsec_new")] {
        let body = user_created(id);
        let header = dsyncd::signature::sign(&Secret::new(secret), now_ms(), body.as_bytes());
        assert_eq!(
            app.post(body, Some(&header)).await.status(),
            200,
            "{secret}"
        );
    }
    let body = user_created("event_retired");
    let header = dsyncd::signature::sign(&Secret::new("whsec_retired"), now_ms(), body.as_bytes());
    assert_eq!(app.post(body, Some(&header)).await.status(), 401);
    assert_eq!(inbox(&pool).await.len(), 2);
    app.stop().await;
}

#[sqlx::test]
async fn signed_bodies_that_are_not_events_are_400(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    for body in [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"id":"event_1"}"#,
        r#"{"id":12,"event":"dsync.user.created"}"#,
        r#"{"id":"event_1","event":null}"#,
        r#"{"id":"event_1","event":"x"} {}"#,
    ] {
        let response = app.post(body.to_owned(), Some(&sign_now(body))).await;
        assert_eq!(
            error_of(response).await,
            (400, "not_an_event".to_owned()),
            "{body}"
        );
    }
    let deep = format!(
        r#"{{"id":"e","event":"x","data":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let response = app.post(deep.clone(), Some(&sign_now(&deep))).await;
    assert_eq!(response.status(), 400);
    assert!(inbox(&pool).await.is_empty());
    app.stop().await;
}

#[sqlx::test]
async fn bodies_over_the_limit_are_413(pool: PgPool) {
    let mut config = TestApp::config();
    config.server.body_limit_bytes = 2048;
    let app = TestApp::spawn_with(pool.clone(), config, Role::Receiver).await;
    let padding = "x".repeat(2048);
    let body = format!(
        r#"{{"id":"event_big","event":"dsync.user.created","data":{{"pad":"{padding}"}}}}"#
    );
    let response = app.post(body.clone(), Some(&sign_now(&body))).await;
    assert_eq!(error_of(response).await, (413, "body_too_large".to_owned()));

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(512)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let response = app
        .client
        .post(format!("{}/webhooks/workos", app.address))
        .header("WorkOS-Signature", sign_now(&body))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, (413, "body_too_large".to_owned()));

    // Just under the limit is fine.
    let fits = format!(
        r#"{{"id":"event_fits","event":"x","data":"{}"}}"#,
        "y".repeat(1990)
    );
    assert!(fits.len() <= 2048);
    assert_eq!(app.deliver(&fits).await.status(), 200);
    assert_eq!(inbox(&pool).await.len(), 1);
    app.stop().await;
}

#[sqlx::test]
async fn concurrent_deliveries_are_all_committed(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    let mut requests = Vec::new();
    for n in 0..200 {
        let body = user_created(&format!("event_{n:04}"));
        let (client, address) = (app.client.clone(), app.address.clone());
        requests.push(tokio::spawn(async move {
            client
                .post(format!("{address}/webhooks/workos"))
                .header("WorkOS-Signature", sign_now(&body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM workos.inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 200);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_quick_503_and_not_ready() {
    let mut config = TestApp::config();
    // Nothing listens on port 1.
    config.database.url = Some(Secret::new("postgres://postgres@127.0.0.1:1/postgres"));
    config.database.timeout_ms = 500;
    let service = Service::new(config).unwrap();
    let app = TestApp::spawn_service(service, Role::All).await;

    let started = Instant::now();
    let response = app.deliver(&fixture("dsync.user.created.json")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(error_of(response).await, (503, "unavailable".to_owned()));

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    app.stop().await;
}

#[sqlx::test]
async fn ready_while_the_database_answers(pool: PgPool) {
    let app = TestApp::receiver(pool).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn a_worker_only_process_serves_health_but_not_the_webhook(pool: PgPool) {
    let app = TestApp::spawn_with(pool, TestApp::config(), Role::Worker).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        app.deliver(&fixture("dsync.user.created.json"))
            .await
            .status(),
        404
    );
    app.stop().await;
}

#[sqlx::test]
async fn shutdown_finishes_in_flight_requests_then_stops_accepting(pool: PgPool) {
    let app = TestApp::receiver(pool.clone()).await;
    // Open a request whose body is still arriving when shutdown starts.
    let body = user_created("event_in_flight");
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let request = app
        .client
        .post(format!("{}/webhooks/workos", app.address))
        .header("WorkOS-Signature", sign_now(&body))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let (first, rest) = body.as_bytes().split_at(10);
    sender.send(Ok(first.to_vec())).await.unwrap();
    let in_flight = tokio::spawn(request);
    // The server has the request once the first bytes are read; wait for the connection to be
    // accounted for by asking the health endpoint on another connection.
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    app.shutdown.cancel();
    sender.send(Ok(rest.to_vec())).await.unwrap();
    drop(sender);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    app.task.await.unwrap().unwrap();
    assert_eq!(inbox(&pool).await.len(), 1);

    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", app.address))
        .send()
        .await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}
