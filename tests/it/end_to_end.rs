//! The whole loop over real sockets: signed deliveries into `dsyncd serve --role all`, and the
//! synced tables changing as a downstream app sees them (through the change notifications).

use std::time::Duration;

use dsyncd::Role;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::helpers::*;

/// Waits for the change notification about `table` row `id` (bounded; a missing one fails).
async fn changed(listener: &mut PgListener, table: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let notification = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no change to {table} {id} within 10 s"))
            .unwrap();
        let payload: Value = serde_json::from_str(notification.payload()).unwrap();
        let key = payload
            .get("id")
            .or_else(|| payload.get("user_id"))
            .and_then(Value::as_str);
        if payload["table"] == table && key == Some(id) {
            return payload;
        }
    }
}

/// Waits (bounded) until the worker has finished `id`, checking its status every 10 ms.
async fn wait_until_finished(pool: &PgPool, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM workos.inbox_status WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        if ["done", "ignored", "dead"].contains(&status.as_str()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still {status} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test]
async fn users_groups_and_memberships_appear_change_and_go(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), TestApp::config(), Role::All).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("workos_directory_changes").await.unwrap();
    let user = "directory_user_01E1JG7J09H96KYP8HM9B0G5SJ";

    // The membership first: WorkOS promises no order.
    assert_eq!(
        app.deliver(&fixture("dsync.group.user_added.json"))
            .await
            .status(),
        200
    );
    assert_eq!(
        changed(&mut listener, "directory_group_memberships", user).await["op"],
        "upsert"
    );
    assert_eq!(
        app.deliver(&fixture("dsync.user.created.json"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.deliver(&fixture("dsync.user.updated.json"))
            .await
            .status(),
        200
    );
    changed(&mut listener, "directory_users", user).await;
    let (job_title, deleted): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT job_title, deleted_at FROM workos.directory_users WHERE id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((job_title.as_str(), deleted), ("Staff Engineer", None));

    assert_eq!(
        app.deliver(&fixture("dsync.user.deleted.json"))
            .await
            .status(),
        200
    );
    assert_eq!(
        changed(&mut listener, "directory_users", user).await["op"],
        "delete"
    );
    let live_memberships: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM workos.directory_group_memberships WHERE user_id = $1 AND deleted_at IS NULL",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        live_memberships, 0,
        "the user's deletion removed the membership"
    );

    // An old retry after the deletion changes nothing.
    let retry = fixture("dsync.user.created.json")
        .replace("event_01HZ0000000000000000000002", "event_late_retry");
    assert_eq!(app.deliver(&retry).await.status(), 200);
    // Nothing changes, so nothing is announced: wait for the row to be finished.
    wait_until_finished(&pool, "event_late_retry").await;
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM workos.inbox_status ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        statuses.iter().all(|(_, status)| status == "done"),
        "{statuses:?}"
    );
    let deleted: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM workos.directory_users WHERE id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(deleted.is_some(), "still deleted");
    app.stop().await;
}
