//! Convergence at scale: one directory's long history (about 10,000 events: hundreds of users
//! and dozens of groups in several versions each, memberships added and removed, deletions),
//! delivered shuffled, with duplicates and late retries of old versions, in random batch sizes,
//! leaves exactly the tables that applying it in order, one event per transaction, leaves.
//!
//! `directory.rs` checks the same property on short histories of two users and two groups, and
//! provides the pieces used here: the steps, the history that turns them into WorkOS bodies,
//! applying, and reading the tables. This test adds the size of a real directory. It takes
//! about a minute, so it is ignored by default; `reliability/run` runs it:
//!
//! ```sh
//! scripts/test --test it convergence -- --ignored --nocapture
//! ```
//!
//! `DSYNCD_CONVERGENCE_EVENTS` (10000) and `DSYNCD_CONVERGENCE_CASES` (3) size it; every case
//! prints its seed, and `DSYNCD_CONVERGENCE_SEED` replays one.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::directory::{
    apply, apply_one_by_one, events, steps, tables, truncate, Current, History, Step, StepWeights,
};

const USERS: usize = 300;
const GROUPS: usize = 30;

/// A step of a long history. Unlike the short histories of `directory.rs`, deletions are rare,
/// so that most objects live through many versions before some of them go.
fn step() -> impl Strategy<Value = Step> {
    steps(
        USERS,
        GROUPS,
        StepWeights {
            upsert_user: 300,
            delete_user: 8,
            upsert_group: 80,
            delete_group: 2,
            toggle_membership: 560,
            update_directory: 20,
            deactivate_directory: 20,
        },
    )
}

/// A history and one way of delivering it.
struct Delivery {
    in_order: Vec<Value>,
    /// What the history says is live at its end.
    current: Current,
    delivered: Vec<Value>,
    batch_sizes: Vec<usize>,
    duplicates: usize,
    late_retries: usize,
}

// The bodies are megabytes; a failure reports the seed, not the case.
impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Delivery {{ events: {}, delivered: {}, duplicates: {}, late_retries: {} }}",
            self.in_order.len(),
            self.delivered.len(),
            self.duplicates,
            self.late_retries
        )
    }
}

/// Mostly small batches (retries, a trickle of changes), some as large as the worker claims.
fn batch_size() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1..10usize, 2 => 10..100usize, 1 => 100..=500usize]
}

fn delivery(events_wanted: usize) -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(step(), events_wanted * 2),
        prop::option::weighted(0.25, any::<bool>()),
    )
        .prop_map(move |(steps, delete_directory)| {
            let mut history = History::first_sync(USERS, GROUPS);
            // Steps that make no sense at their point give no event; there are steps to spare.
            for step in &steps {
                if history.bodies.len() >= events_wanted - usize::from(delete_directory.is_some()) {
                    break;
                }
                history.step(step);
            }
            if let Some(legacy) = delete_directory {
                history.delete_directory(legacy);
            }
            (history.bodies.clone(), history.current())
        })
        .prop_flat_map(|(in_order, current)| {
            let count = in_order.len();
            (
                Just(in_order.clone()).prop_shuffle(),
                // About one event in ten delivered twice, anywhere.
                prop::collection::vec((0..count, 0..=count), count / 10),
                // About one in twenty of the older half retried after everything else.
                prop::collection::vec(0..count / 2, count / 20),
                prop::collection::vec(batch_size(), 1..64),
            )
                .prop_map(move |(mut delivered, duplicates, late, batch_sizes)| {
                    for &(original, position) in &duplicates {
                        delivered.insert(position.min(delivered.len()), in_order[original].clone());
                    }
                    delivered.extend(late.iter().map(|&original| in_order[original].clone()));
                    Delivery {
                        in_order: in_order.clone(),
                        current: current.clone(),
                        delivered,
                        batch_sizes,
                        duplicates: duplicates.len(),
                        late_retries: late.len(),
                    }
                })
        })
}

/// The case for `seed`: the same seed gives the same history and delivery.
fn generate(seed: u64, events_wanted: usize) -> anyhow::Result<Delivery> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let tree = delivery(events_wanted)
        .new_tree(&mut runner)
        .map_err(|reason| anyhow::anyhow!("generating the case: {reason}"))?;
    Ok(tree.current())
}

/// Rows of one table by key, for reporting differences.
fn by_key(rows: &Value) -> BTreeMap<String, &Value> {
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let key = match &row["id"] {
                Value::String(id) => id.clone(),
                _ => format!("{}/{}", row["group_id"], row["user_id"]),
            };
            (key, row)
        })
        .collect()
}

/// The first rows that differ between two dumps of the tables, with the columns that differ.
fn differences(expected: &Value, actual: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["directories", "users", "groups", "memberships"] {
        let expected = by_key(&expected[table]);
        let actual = by_key(&actual[table]);
        let keys: std::collections::BTreeSet<&String> =
            expected.keys().chain(actual.keys()).collect();
        for key in keys {
            let (want, got) = (expected.get(key), actual.get(key));
            if want == got || found.len() == 5 {
                continue;
            }
            let columns = match (want, got) {
                (Some(Value::Object(want)), Some(Value::Object(got))) => want
                    .iter()
                    .filter(|(column, value)| got.get(*column) != Some(value))
                    .map(|(column, value)| {
                        format!("{column}: in order {value}, delivered {}", got[column])
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => format!("in order {want:?}, delivered {got:?}"),
            };
            found.push(format!("{table} {key}: {columns}"));
        }
    }
    found
}

/// Rows, and live rows, per table.
fn counts(tables: &Value) -> String {
    ["directories", "users", "groups", "memberships"]
        .iter()
        .map(|table| {
            let rows = tables[*table].as_array().map_or(&[][..], Vec::as_slice);
            let live = rows
                .iter()
                .filter(|row| row["deleted_at"].is_null())
                .count();
            format!("{table}={}/{live}", rows.len())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies the history in order and as delivered; the tables must be equal.
async fn converges(pool: &PgPool, delivery: &Delivery) -> anyhow::Result<String> {
    truncate(pool).await?;
    let started = Instant::now();
    apply_one_by_one(pool, &events(&delivery.in_order)).await?;
    let in_order_secs = started.elapsed().as_secs_f64();
    let expected = tables(pool).await?;
    delivery
        .current
        .check(&expected)
        .map_err(|problem| anyhow::anyhow!("the in-order tables: {problem}"))?;

    truncate(pool).await?;
    let started = Instant::now();
    let delivered = events(&delivery.delivered);
    let mut rest = &delivered[..];
    let mut batches = 0;
    for size in delivery.batch_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at((*size).min(rest.len()));
        apply(pool, batch).await?;
        batches += 1;
        rest = after;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let actual = tables(pool).await?;

    let found = differences(&expected, &actual);
    anyhow::ensure!(
        found.is_empty() && expected == actual,
        "the tables differ:\n{}",
        found.join("\n")
    );
    // A history that left nothing would prove little.
    anyhow::ensure!(
        expected["users"]
            .as_array()
            .is_some_and(|rows| rows.len() == USERS)
            && expected["memberships"]
                .as_array()
                .is_some_and(|rows| rows.len() > USERS),
        "the history is too thin: {}",
        counts(&expected)
    );
    Ok(format!(
        "events={} delivered={} duplicates={} late_retries={} batches={batches} \
         rows(all/live): {} in_order_secs={in_order_secs:.1} delivered_secs={delivered_secs:.1}",
        delivery.in_order.len(),
        delivery.delivered.len(),
        delivery.duplicates,
        delivery.late_retries,
        counts(&expected),
    ))
}

fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name} is not a number: {value:?}")),
        Err(_) => Ok(default),
    }
}

#[sqlx::test]
#[ignore = "about a minute; reliability/run runs it (--ignored)"]
async fn a_long_history_delivered_in_any_order_gives_the_tables_of_in_order_delivery(
    pool: PgPool,
) -> anyhow::Result<()> {
    let events_wanted = setting("DSYNCD_CONVERGENCE_EVENTS", 10_000)? as usize;
    let cases = setting("DSYNCD_CONVERGENCE_CASES", 3)?;
    let first_seed = match std::env::var("DSYNCD_CONVERGENCE_SEED") {
        Ok(_) => setting("DSYNCD_CONVERGENCE_SEED", 0)?,
        Err(_) => rand::random(),
    };
    anyhow::ensure!(
        events_wanted > USERS + GROUPS,
        "too few events for the first sync"
    );

    // Ten thousand commits in order: waiting for each one's flush would be most of the time,
    // and proves nothing here.
    let options: PgConnectOptions = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?;

    for case in 0..cases {
        let seed = first_seed.wrapping_add(case);
        let delivery = generate(seed, events_wanted)?;
        let report = converges(&pool, &delivery)
            .await
            .with_context(|| format!("case {} (DSYNCD_CONVERGENCE_SEED={seed})", case + 1))?;
        println!(
            "convergence: case {}/{cases} seed={seed} {report}",
            case + 1
        );
    }
    Ok(())
}
