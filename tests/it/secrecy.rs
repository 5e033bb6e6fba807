//! Secrets and directory data never leak: not into the service's logs at any level, not into
//! error responses or `last_error`, not into the `Debug` output of the configuration or the
//! verifier.

use std::time::Duration;

use dsyncd::config::{Config, Secret};
use dsyncd::signature::Verifier;
use dsyncd::{Role, Service};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// An address that appears only in the bodies this test sends.
const EMAIL: &str = "ada.secrecy.7731@example.com";

/// A `dsync.user.created` carrying [`EMAIL`], with `data` changed by `edit`.
fn user_event(id: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut data = json!({
        "object": "directory_user",
        "id": format!("directory_user_{id}"),
        "directory_id": "directory_secrecy",
        "email": EMAIL,
        "username": EMAIL,
        "emails": [{"primary": true, "type": "work", "value": EMAIL}],
        "first_name": "Ada",
        "state": "active",
        "created_at": "2021-06-25T19:07:33.155Z",
        "updated_at": "2021-06-25T19:07:33.155Z",
    });
    edit(&mut data);
    json!({"object": "event", "id": id, "event": "dsync.user.created", "data": data,
           "created_at": "2021-06-25T19:07:33.155Z"})
    .to_string()
}

/// The `v1` of a signature header.
fn v1_of(header: &str) -> String {
    header.split("v1=").nth(1).unwrap().to_owned()
}

// sqlx tests run on a current-thread runtime: the service and the worker run on this thread,
// where the subscriber below is the default.
#[sqlx::test]
async fn secrets_and_directory_data_stay_out_of_logs_and_error_responses(pool: PgPool) {
    let (captured, _logging) = capture_logs();

    let mut config = TestApp::config();
    config.server.body_limit_bytes = 4096;
    let worker = Service::with_pool(config.clone(), pool.clone())
        .unwrap()
        .worker();
    let app = TestApp::spawn_with(pool.clone(), config, Role::Receiver).await;

    let secret = Secret::new(SECRET);
    let now = now_ms();
    let mut headers_sent = Vec::new();
    let mut error_bodies = Vec::new();
    let mut send = async |body: String, header: Option<String>, expected: u16| {
        let response = app.post(body, header.as_deref()).await;
        assert_eq!(response.status(), expected, "{header:?}");
        let text = response.text().await.unwrap();
        if expected != 200 {
            error_bodies.push(text);
        }
        headers_sent.extend(header);
    };

    // Accepted, and applied by the worker.
    let applied = user_event("event_secrecy_applied", |_| {});
    send(applied.clone(), Some(sign_now(&applied)), 200).await;
    // Accepted, then rejected by the directory handler, whose messages could quote the data.
    let bad_roles = user_event("event_secrecy_roles", |data| data["roles"] = json!(EMAIL));
    send(bad_roles.clone(), Some(sign_now(&bad_roles)), 200).await;
    let bad_time = user_event("event_secrecy_time", |data| {
        data["updated_at"] = json!(EMAIL)
    });
    send(bad_time.clone(), Some(sign_now(&bad_time)), 200).await;

    // Refused by the receiver.
    let refused = user_event("event_secrecy_refused", |_| {});
    send(refused.clone(), None, 401).await;
    let other_secret =
        dsyncd::signature::sign(&Secret::new("whsec_other_secret"), now, refused.as_bytes());
    send(refused.clone(), Some(other_secret), 401).await;
    let expired = dsyncd::signature::sign(&secret, now - 3_600_000, refused.as_bytes());
    send(refused.clone(), Some(expired), 401).await;
    let for_another_body = sign_now(&applied);
    send(refused.clone(), Some(for_another_body), 401).await;
    // A client that sends the secret itself in the header.
    send(refused.clone(), Some(format!("t={now}, v1={SECRET}")), 401).await;
    // Signed, but not events: serde_json's messages quote wrongly typed values.
    for not_an_event in [
        json!(EMAIL).to_string(),
        json!({"id": "event_secrecy_type", "event": EMAIL.len(), "data": {"email": EMAIL}})
            .to_string(),
        json!({"id": [EMAIL], "event": "dsync.user.created"}).to_string(),
        format!(r#"{{"id":"event_secrecy_syntax","event":"x","data":{{"email":"{EMAIL}"}}"#),
    ] {
        send(not_an_event.clone(), Some(sign_now(&not_an_event)), 400).await;
    }
    // Over the limit.
    let large = user_event("event_secrecy_large", |data| {
        data["raw_attributes"] = json!({ "note": EMAIL.repeat(200) });
    });
    send(large.clone(), Some(sign_now(&large)), 413).await;

    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.finished, report.failed), (1, 2));
    let last_errors: Vec<String> = sqlx::query_scalar(
        "SELECT last_error FROM workos.inbox_status WHERE status = 'dead' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(last_errors.len(), 2);
    app.stop().await;

    let logs = captured.text();
    // The capture works, at the levels that matter: a debug line of the receiver, the
    // rejections, the worker's failures.
    for expected in [
        "delivery verified",
        "signature_mismatch",
        "not_an_event",
        "body_too_large",
        "event is dead",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    let signatures: Vec<String> = headers_sent.iter().map(|header| v1_of(header)).collect();
    let mut secrets = vec![SECRET.to_owned(), EMAIL.to_owned()];
    secrets.extend(signatures);
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} in the logs:\n{logs}"
        );
        for body in &error_bodies {
            assert!(!body.contains(secret.as_str()), "{secret} in {body}");
        }
        for error in &last_errors {
            assert!(!error.contains(secret.as_str()), "{secret} in {error}");
        }
    }
}

#[test]
fn debug_output_of_the_configuration_and_the_verifier_hides_secrets() {
    let mut config = Config::default();
    config.webhook.secrets = vec![
        Secret::new("whsec_rotating_out_4412"),
        Secret::new("whsec_rotating_in_9035"),
    ];
    config.database.url = Some(Secret::new(
        "postgres://dsyncd:db-password-5521@db.internal/dsyncd",
    ));
    let verifier = Verifier::new(&config.webhook.secrets, Duration::from_secs(180));
    let printed = [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{verifier:?}"),
        format!("{verifier:#?}"),
        serde_json::to_string(&config).unwrap(),
    ];
    for text in &printed {
        for secret in [
            "whsec_rotating_out_4412",
            "whsec_rotating_in_9035",
            "db-password-5521",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    // What is printed instead.
    assert!(printed[0].contains("[redacted]"), "{}", printed[0]);
    assert!(printed[2].contains("secrets: 2"), "{}", printed[2]);
}

// The API key, the bearer header and WorkOS's answers stay out of the logs of reconciliation,
// through retries, failures and a refused key.
#[sqlx::test]
async fn the_workos_api_key_and_answers_stay_out_of_logs(pool: PgPool) {
    use crate::fake_workos::{self, Failure, FakeWorkos};
    use dsyncd::reconcile::{snapshot, Options, Reconciler};

    let (captured, _logging) = capture_logs();

    let fake = FakeWorkos::start().await;
    let mut config = TestApp::config();
    config.workos.api_key = Some(Secret::new(fake_workos::API_KEY));
    config.workos.base_url = fake.url.clone();
    config.workos.backoff_base_ms = 10;
    let reconciler = Reconciler::new(&config, pool.clone(), dsyncd::metrics::Metrics::new())
        .unwrap()
        .unwrap();
    {
        let mut workos = fake.lock();
        workos.put_directory(fake_workos::directory(
            "directory_secrecy",
            "2026-03-01T00:00:00.000Z",
        ));
        workos.put_user(
            fake_workos::user(
                "directory_user_s",
                "directory_secrecy",
                EMAIL,
                "2026-03-01T00:00:00.000Z",
            ),
            true,
        );
        workos.fail("/directory_users", Failure::Status(500));
        workos.fail("/directory_users", Failure::RateLimited(0));
    }
    reconciler.restart().await.unwrap();
    {
        let mut workos = fake.lock();
        workos.put_user(
            fake_workos::user(
                "directory_user_t",
                "directory_secrecy",
                EMAIL,
                "2026-03-02T00:00:00.000Z",
            ),
            true,
        );
        workos.fail("/events", Failure::Status(502));
    }
    reconciler.tail().step().await.unwrap();
    // A refused key.
    let bad_key = "sk_test_bad_key_secrecy_3391";
    config.workos.api_key = Some(Secret::new(bad_key));
    let client = dsyncd::workos_api::Client::new(&config.workos, Secret::new(bad_key)).unwrap();
    let error = snapshot::run(&pool, &client, &Options::default())
        .await
        .unwrap_err();
    tracing::error!(error = %error, "reconciliation stopped");

    let logs = captured.text();
    for expected in [
        "WorkOS request failed; retrying",
        "snapshot reconciliation finished",
        "WORKOS_API_KEY",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    for secret in [
        fake_workos::API_KEY,
        bad_key,
        "Bearer",
        EMAIL,
        "Internal error",
        "Too many requests",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

// ---- The read API's keys ----

/// Keys sent to the read API, right or wrong, never reach a log line, at any level, nor an
/// error body; neither does the configured key.
#[sqlx::test]
async fn read_api_keys_stay_out_of_logs(pool: PgPool) {
    const KEY: &str = "sk_secrecy_api_key_5590";
    const WRONG: &str = "sk_secrecy_wrong_key_8127";
    let (captured, _logging) = capture_logs();

    let mut config = TestApp::config();
    config.api.keys = vec![dsyncd::config::ApiKey {
        key: Secret::new(KEY),
        organization_ids: Some(vec!["org_secrecy".to_owned()]),
    }];
    let app = TestApp::spawn_with(pool, config, Role::All).await;
    let mut bodies = Vec::new();
    for (key, path, status) in [
        (Some(KEY), "/directories", 200),
        (
            Some(KEY),
            "/directory_users?directory=directory_secrecy",
            200,
        ),
        (Some(KEY), "/directory_users/directory_user_secrecy", 404),
        (Some(KEY), "/directory_users?limit=0", 422),
        (Some(WRONG), "/directories", 401),
        (None, "/directories", 401),
    ] {
        let mut request = app.client.get(format!("{}{path}", app.address));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        bodies.push(response.text().await.unwrap());
    }
    app.stop().await;

    let logs = captured.text();
    // The capture works: the read API's request spans are there.
    assert!(logs.contains("api_request"), "no request span:\n{logs}");
    for secret in [KEY, WRONG] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        for body in &bodies {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
    }
    assert!(!logs.to_lowercase().contains("bearer"), "{logs}");
}
