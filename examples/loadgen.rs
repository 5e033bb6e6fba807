//! A load generator for dsyncd (used by `bench/run` and the reliability scripts): posts unique,
//! pre-signed `dsync.user.created` deliveries of about 1 KB over keep-alive HTTP/1.1
//! connections and prints one JSON line of results.
//!
//! ```sh
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/workos \
//!     --secret whsec_… --connections 64 --requests 100000
//! ```
//!
//! Closed loop by default (each connection sends its next request when the last is answered);
//! with `--rate` the requests are paced to that many per second in total. With
//! `--changes-database URL` it also listens on `workos_directory_changes` and reports the lag
//! from each 200 to the notification that its user was applied. `--requests 0` with
//! `--changes-database` only listens, as costly an observer as a run's, until it is killed
//! (`bench/scale` runs one beside a burst that no other run watches, as the control).
//!
//! With `--get-paths FILE` it sends `GET`s instead (the read API's benchmark): each request
//! takes the next path of the file (one per line, in turn), with `--bearer KEY` if given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use dsyncd::config::Secret;
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// The webhook URL (http only).
    #[arg(long)]
    url: String,
    /// The secret to sign with.
    #[arg(long, env = "WORKOS_WEBHOOK_SECRET")]
    secret: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Pace to this many requests per second in total (default: as fast as answered).
    #[arg(long)]
    rate: Option<f64>,
    /// Listen for applied users on this database and report the lag.
    #[arg(long)]
    changes_database: Option<String>,
    /// Prefix of the event and user ids, to keep runs apart.
    #[arg(long, default_value = "bench")]
    id_prefix: String,
    /// Print the first body and exit (for a side-by-side pgbench of the same rows).
    #[arg(long)]
    print_body: bool,
    /// Retry each delivery until it is answered 2xx, as WorkOS does, for at most this long.
    #[arg(long)]
    retry_for_secs: Option<u64>,
    /// Write the event ids answered 2xx to this file, one per line.
    #[arg(long)]
    acknowledged_file: Option<std::path::PathBuf>,
    /// The directory the users belong to (`data.directory_id`; default: the sample's).
    #[arg(long)]
    directory: Option<String>,
    /// With `--changes-database`: write one line per delivery answered 2xx to this file,
    /// `<answered, Unix ms> <lag ms, or -1 if never seen applied>`, so that a percentile can
    /// be taken over a window (bench/scale).
    #[arg(long)]
    lags_file: Option<std::path::PathBuf>,
    /// Send GETs of these paths (one per line, in turn) instead of deliveries; `--url` then
    /// only gives the host and port.
    #[arg(long)]
    get_paths: Option<std::path::PathBuf>,
    /// With `--get-paths`: send `Authorization: Bearer <KEY>`.
    #[arg(long)]
    bearer: Option<String>,
}

struct Delivery {
    user_id: String,
    body: Bytes,
    signature: String,
}

/// One request's outcome: (status or 0 for a transport error, latency, when answered, user).
type Outcome = (u16, Duration, Instant, usize);

fn deliveries(args: &Args) -> Vec<Delivery> {
    let secret = Secret::new(args.secret.clone());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let template: Value =
        serde_json::from_str(include_str!("../samples/dsync.user.created.json")).unwrap();
    (0..args.requests)
        .map(|n| {
            let user_id = format!("directory_user_{}_{n:08}", args.id_prefix);
            let mut body = template.clone();
            body["id"] = json!(format!("event_{}_{n:08}", args.id_prefix));
            body["data"]["id"] = json!(user_id);
            body["data"]["idp_id"] = json!(format!("{n}"));
            body["data"]["email"] = json!(format!("user{n}@example.com"));
            if let Some(directory) = &args.directory {
                body["data"]["directory_id"] = json!(directory);
            }
            // Pad the sample (about 860 bytes) to the size the bars speak of, about 1 KB.
            let raw = &mut body["data"]["raw_attributes"];
            raw["title"] = json!("Senior Software Engineer, Platform");
            raw["cost_center"] = json!("CC-1042 Platform Engineering");
            raw["location"] = json!("Berlin, Germany");
            raw["employee_number"] = json!(format!("{n:08}"));
            let body = Bytes::from(serde_json::to_vec(&body).unwrap());
            let signature = dsyncd::signature::sign(&secret, now_ms, &body);
            Delivery {
                user_id,
                body,
                signature,
            }
        })
        .collect()
}

/// One keep-alive HTTP/1.1 connection, opened again after a failure. It writes each request
/// in one piece and reads the response with `httparse`, in the task that sends: the load
/// generator shares the machine with what it measures, and hyper's client (a connection task
/// beside each sending task) took about half as much CPU again per request.
struct Connection {
    authority: String,
    path: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Connection {
    fn new(url: &hyper::Uri) -> Connection {
        Connection {
            authority: url.authority().expect("the URL has a host").to_string(),
            path: url.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            stream: None,
            request: Vec::with_capacity(2048),
            response: Vec::with_capacity(1024),
        }
    }

    /// Posts once; the status, or 0 for a transport error (the connection is then closed).
    async fn post(&mut self, signature: &str, body: &[u8]) -> u16 {
        match self.exchange(signature, body).await {
            Ok(status) => status,
            Err(_) => {
                self.stream = None;
                0
            }
        }
    }

    async fn exchange(&mut self, signature: &str, body: &[u8]) -> std::io::Result<u16> {
        use std::io::Write;
        self.request.clear();
        write!(
            self.request,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             workos-signature: {signature}\r\ncontent-length: {}\r\n\r\n",
            self.path,
            self.authority,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.send().await
    }

    /// `GET path` once; the status, or 0 for a transport error.
    async fn get(&mut self, path: &str, bearer: Option<&str>) -> u16 {
        use std::io::Write;
        self.request.clear();
        let written = match bearer {
            Some(key) => write!(
                self.request,
                "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\n\r\n",
                self.authority
            ),
            None => write!(
                self.request,
                "GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n",
                self.authority
            ),
        };
        match written {
            Ok(()) => match self.send().await {
                Ok(status) => status,
                Err(_) => {
                    self.stream = None;
                    0
                }
            },
            Err(_) => 0,
        }
    }

    /// Writes `self.request` (connecting first if needed) and reads the response.
    async fn send(&mut self) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.authority.as_str()).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&self.request).await?;

        self.response.clear();
        loop {
            if stream.read_buf(&mut self.response).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = response
                .parse(&self.response)
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?
            else {
                continue;
            };
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case(name))
                    .map(|header| header.value)
            };
            let length: usize = header("content-length")
                .and_then(|value| std::str::from_utf8(value).ok()?.trim().parse().ok())
                .ok_or(std::io::ErrorKind::InvalidData)?;
            let close =
                header("connection").is_some_and(|value| value.eq_ignore_ascii_case(b"close"));
            let status = response.code.unwrap_or(0);
            while self.response.len() < head + length {
                if stream.read_buf(&mut self.response).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            if close {
                self.stream = None;
            }
            return Ok(status);
        }
    }
}

/// How a connection task sends.
#[derive(Clone)]
struct Plan {
    url: hyper::Uri,
    deliveries: Arc<Vec<Delivery>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    pace: Option<Duration>,
    started: Instant,
    /// Retry each delivery until it is answered 2xx (as WorkOS does), re-signing each time,
    /// for at most this long; without it, a delivery is sent once.
    retry_for: Option<Duration>,
    secret: Secret,
    /// GET these paths instead of posting deliveries.
    gets: Option<Arc<Vec<String>>>,
    bearer: Option<String>,
    /// Requests in all (for GETs; deliveries count themselves).
    requests: usize,
}

async fn connection(plan: Plan) -> Vec<Outcome> {
    let mut connection = Connection::new(&plan.url);
    let mut outcomes = Vec::new();
    loop {
        let index = plan.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(paths) = &plan.gets {
            if index >= plan.requests {
                break;
            }
            let sent = Instant::now();
            let status = connection
                .get(&paths[index % paths.len()], plan.bearer.as_deref())
                .await;
            let answered = Instant::now();
            outcomes.push((status, answered - sent, answered, index));
            if status == 0 {
                break;
            }
            continue;
        }
        let Some(delivery) = plan.deliveries.get(index) else {
            break;
        };
        if let Some(pace) = plan.pace {
            tokio::time::sleep_until((plan.started + pace * index as u32).into()).await;
        }
        let sent = Instant::now();
        let mut status = connection.post(&delivery.signature, &delivery.body).await;
        if let Some(retry_for) = plan.retry_for {
            while !(200..300).contains(&status) && sent.elapsed() < retry_for {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let signature = dsyncd::signature::sign(&plan.secret, unix_ms(), &delivery.body);
                status = connection.post(&signature, &delivery.body).await;
            }
        }
        let answered = Instant::now();
        outcomes.push((status, answered - sent, answered, index));
        if status == 0 && plan.retry_for.is_none() {
            break;
        }
    }
    outcomes
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.print_body {
        args.requests = 1;
        let body = &deliveries(&args)[0].body;
        println!("{}", String::from_utf8_lossy(body));
        return Ok(());
    }
    let url: hyper::Uri = args.url.parse()?;
    let gets = match &args.get_paths {
        Some(file) => Some(Arc::new(
            std::fs::read_to_string(file)?
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )),
        None => None,
    };
    let deliveries = Arc::new(if gets.is_some() {
        Vec::new()
    } else {
        deliveries(&args)
    });
    let applied: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    if let Some(database) = &args.changes_database {
        let mut listener = sqlx::postgres::PgListener::connect(database).await?;
        listener.listen("workos_directory_changes").await?;
        let applied = applied.clone();
        // Every change of every directory is announced on the channel; this run's users are
        // picked out by their ids before any parsing, so that another directory's burst (a
        // first sync of 200,000 users in `bench/scale`) does not slow the listener down and
        // pass for lag of this run's deliveries.
        let ours = format!("\"directory_user_{}_", args.id_prefix);
        tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let at = Instant::now();
                if !notification.payload().contains(&ours) {
                    continue;
                }
                if let Ok(payload) = serde_json::from_str::<Value>(notification.payload()) {
                    if let Some(id) = payload["id"].as_str() {
                        applied.lock().unwrap().entry(id.to_owned()).or_insert(at);
                    }
                }
            }
        });
    }

    if args.requests == 0 && args.changes_database.is_some() {
        std::future::pending::<()>().await;
    }

    let plan = Plan {
        url,
        deliveries: deliveries.clone(),
        next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        pace: args.rate.map(|rate| Duration::from_secs_f64(1.0 / rate)),
        started: Instant::now(),
        retry_for: args.retry_for_secs.map(Duration::from_secs),
        secret: Secret::new(args.secret.clone()),
        gets,
        bearer: args.bearer.clone(),
        requests: args.requests,
    };
    let started = plan.started;
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(plan.clone())))
        .collect();
    let mut outcomes = Vec::with_capacity(args.requests);
    for task in tasks {
        outcomes.extend(task.await?);
    }
    let elapsed = started.elapsed();

    let ok = outcomes
        .iter()
        .filter(|o| (200..300).contains(&o.0))
        .count();
    if let Some(path) = &args.acknowledged_file {
        let ids: String = outcomes
            .iter()
            .filter(|o| (200..300).contains(&o.0))
            .map(|o| format!("event_{}_{:08}\n", args.id_prefix, o.3))
            .collect();
        std::fs::write(path, ids)?;
    }
    let errors = outcomes.iter().filter(|o| o.0 == 0).count();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.1).collect();
    latencies.sort();
    let mut report = json!({
        "connections": args.connections,
        "requests": outcomes.len(),
        "ok": ok,
        "non_2xx": outcomes.len() - ok - errors,
        "transport_errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "throughput": ok as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
    });

    if args.changes_database.is_some() {
        // Wait (bounded) for the last notifications.
        let deadline = Instant::now() + Duration::from_secs(10);
        while applied.lock().unwrap().len() < ok && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let applied = applied.lock().unwrap();
        let mut lags: Vec<Duration> = outcomes
            .iter()
            .filter_map(|(_, _, answered, index)| {
                let at = applied.get(&deliveries[*index].user_id)?;
                Some(at.saturating_duration_since(*answered))
            })
            .collect();
        if let Some(path) = &args.lags_file {
            // Instants to wall-clock time: both clocks read now, once.
            let (now, now_ms) = (Instant::now(), unix_ms() as f64);
            let lines: String = outcomes
                .iter()
                .filter(|o| (200..300).contains(&o.0))
                .map(|(_, _, answered, index)| {
                    let at = now_ms - now.duration_since(*answered).as_secs_f64() * 1000.0;
                    let lag = applied
                        .get(&deliveries[*index].user_id)
                        .map_or(-1.0, |seen| {
                            seen.saturating_duration_since(*answered).as_secs_f64() * 1000.0
                        });
                    format!("{at:.1} {lag:.2}\n")
                })
                .collect();
            std::fs::write(path, lines)?;
        }
        lags.sort();
        report["applied"] = json!(lags.len());
        report["lag_p50_ms"] = json!(percentile(&lags, 50.0));
        report["lag_p99_ms"] = json!(percentile(&lags, 99.0));
    }
    println!("{report}");
    Ok(())
}
