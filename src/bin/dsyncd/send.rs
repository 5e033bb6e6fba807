//! `dsyncd send`: the development loop without WorkOS.

use std::path::PathBuf;

use anyhow::{bail, Context};
use dsyncd::config::Config;
use dsyncd::sender;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true))]
pub struct SendArgs {
    /// The event type of a built-in sample, e.g. dsync.user.created (see --list).
    #[arg(group = "what")]
    event_type: Option<String>,
    /// Post this file's bytes exactly as they are instead of a sample.
    #[arg(long, group = "what")]
    file: Option<PathBuf>,
    /// List the event types there are samples for.
    #[arg(long, group = "what")]
    list: bool,
    /// Where to post; by default this configuration's own listen address.
    #[arg(long)]
    url: Option<String>,
}

pub async fn run(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    if args.list {
        for event in sender::event_types() {
            println!("{event}");
        }
        return Ok(());
    }
    let Some(secret) = config.webhook.secrets.first() else {
        bail!("no secret to sign with: set WORKOS_WEBHOOK_SECRET (or webhook.secrets)");
    };
    let body = match (&args.event_type, &args.file) {
        (Some(event), _) => sender::fresh(event)
            .with_context(|| format!("no sample for `{event}`; `dsyncd send --list` shows them"))?
            .into_bytes(),
        (None, Some(file)) => {
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    let url = args
        .url
        .unwrap_or_else(|| own_url(config, dsyncd::receiver::WEBHOOK_PATH));
    let answer = sender::post_signed(&client(), &url, secret, body)
        .await
        .with_context(|| format!("posting to {url}"))?;
    println!("{} {}", answer.status, answer.body);
    if !(200..300).contains(&answer.status) {
        bail!("{url} answered {}", answer.status);
    }
    Ok(())
}

/// A URL of this configuration's own server, reached over loopback when it listens everywhere.
pub fn own_url(config: &Config, path: &str) -> String {
    let listen = config.server.listen;
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}:{}{path}", listen.port())
}

/// A client for talking to our own server. The server's certificate may be self-signed and
/// name another host than loopback, so certificates are not checked: this client only ever
/// sends sample data to a URL the operator chose.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("a client without extra configuration builds")
}
