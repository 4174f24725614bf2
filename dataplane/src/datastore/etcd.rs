//! The etcdv3 datastore: Calico's keys in etcd, read at one revision and then watched.
//!
//! A session with etcd goes: connect; read every key of the dataplane's directories (see
//! [`keys::DIRECTORIES`]) at one revision R, page by page; send the snapshot; watch the same
//! directories from R + 1, so that no change between the read and the watch is lost; after each
//! burst of changes (quiet for [`QUIET`], or [`MAX_DELAY`] after its first change) rebuild the
//! model from the keys in memory and send it if it changed.
//!
//! When the watch is cancelled (etcd compacted its history past the watch's revision, or gave up
//! on it) the session reads everything again at once and goes on. When etcd cannot be reached
//! the session ends: nothing is sent, so the last good snapshot stays programmed, and a new
//! session is tried after a backoff that doubles up to [`BACKOFF_CAP`]. Every change of the
//! connection's state is logged: connected, lost, still unreachable, reconnected.

pub mod export;
pub mod keys;

mod convert;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use self::convert::Cache;
pub use super::watching::{WatchThread, BACKOFF_CAP, BACKOFF_START, MAX_DELAY, QUIET};
use super::{
    watching::{log_problems, sleep_until, Link, Retry},
    Connection, Delta, Snapshot,
};
use crate::model::Problem;

/// How to reach etcd, with Calico's own settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// CA certificate file (PEM).
    pub ca_cert_file: Option<std::path::PathBuf>,
    /// Client certificate file (PEM).
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key file (PEM).
    pub key_file: Option<std::path::PathBuf>,
    /// Key prefix, `/calico` by default.
    pub prefix: String,
}

impl EtcdConfig {
    /// Checks the settings without contacting etcd: there are endpoints, the certificate files
    /// can be read, and TLS settings match the endpoints' scheme. Errors name the file and the
    /// setting to fix.
    pub fn check(&self) -> anyhow::Result<()> {
        connect_options(self).map(|_| ())
    }
}

/// A request (one page of a read, opening the watch) that takes longer than this counts as a
/// failure: an unreachable endpoint does not always refuse, it may just never answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on an idle connection, so that a watch on a dead peer fails instead of waiting
/// forever; a ping unanswered for `KEEPALIVE_TIMEOUT` ends the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per page of the initial read: a whole cluster in one response would pass gRPC's limit,
/// and each page is a round trip that etcd serves apart (range reads of 210k keys took half as
/// long in pages of 10,000 as of 2,000 in the control bench; 10,000 allocation blocks of a few
/// hundred bytes stay far below [`MAX_MESSAGE`]).
const PAGE: i64 = 10_000;
/// Pages read ahead of their conversion at most: a slow conversion holds etcd's next pages back
/// instead of keeping the whole cluster's raw keys in memory.
const PAGES_AHEAD: usize = 2;
/// Largest response accepted (gRPC's default is 4 MiB); etcd caps one value at 1.5 MiB, and a
/// page of 500 workload endpoints or a watch response of a large transaction can be bigger.
const MAX_MESSAGE: usize = 64 << 20;

/// Where a session sends what it read.
enum Outlet {
    /// The whole cluster after every burst of changes (tools and tests).
    Snapshots(watch::Sender<Option<Snapshot>>),
    /// A whole read as one [`Delta::Replace`], then each burst's deltas (the agent): a change
    /// costs what it touches, not a snapshot of the cluster.
    Deltas(mpsc::UnboundedSender<Vec<Delta>>),
}

impl Outlet {
    /// Sends the whole cache after a read, keeping its `problems`; false when nobody listens
    /// any more.
    fn whole(&self, cache: &mut Cache, problems: &mut Vec<Problem>) -> bool {
        match self {
            Outlet::Snapshots(snapshots) => {
                let snapshot = cache.snapshot();
                log_problems(&snapshot, "etcd");
                problems.clone_from(&snapshot.problems);
                snapshots.send(Some(snapshot)).is_ok()
            }
            Outlet::Deltas(deltas) => {
                cache.record_deltas();
                // The whole read replaces everything: what was recorded before it is in it.
                cache.take_deltas();
                let started = Instant::now();
                let keys = cache.len();
                // The planner keeps the blocks: the cache gives them away rather than keep a copy.
                let (replace, problems) = cache.take_replace();
                info!(keys, took_ms = started.elapsed().as_millis() as u64, "the whole read turned into one replace");
                log_problems(&Snapshot { model: Default::default(), problems }, "etcd");
                deltas.send(vec![replace]).is_ok()
            }
        }
    }

    /// Sends a burst's changes; `problems` are those of the last snapshot sent. False when
    /// nobody listens any more.
    fn burst(&self, cache: &mut Cache, problems: &mut Vec<Problem>) -> bool {
        match self {
            Outlet::Snapshots(snapshots) => {
                let snapshot = cache.snapshot();
                if snapshot.problems != *problems {
                    log_problems(&snapshot, "etcd");
                    problems.clone_from(&snapshot.problems);
                }
                snapshots.send(Some(snapshot)).is_ok()
            }
            // The cache logged each changed key's new problems as it read it.
            Outlet::Deltas(deltas) => {
                let batch = cache.take_deltas();
                batch.is_empty() || deltas.send(batch).is_ok()
            }
        }
    }

    /// Whether a whole read is given away as one [`Delta::Replace`], so that the read keeps the
    /// IPAM keys only as blocks.
    fn gives_blocks(&self) -> bool {
        matches!(self, Outlet::Deltas(_))
    }

    async fn closed(&self) {
        match self {
            Outlet::Snapshots(snapshots) => snapshots.closed().await,
            Outlet::Deltas(deltas) => deltas.closed().await,
        }
    }
}

/// Reads the cluster from etcd and sends a snapshot on every change.
///
/// Returns when every receiver is gone, or at once (after logging why) when the settings are
/// unusable: a missing certificate file, no endpoints.
pub async fn watch(config: EtcdConfig, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) {
    watch_to(config, Outlet::Snapshots(snapshots), connection).await
}

/// Reads the cluster from etcd and sends it as deltas: a [`Delta::Replace`] after every whole
/// read (start, reconnect, compaction), then the deltas of every burst of changes, in order.
pub async fn watch_deltas(config: EtcdConfig, deltas: mpsc::UnboundedSender<Vec<Delta>>, connection: Connection) {
    watch_to(config, Outlet::Deltas(deltas), connection).await
}

async fn watch_to(config: EtcdConfig, outlet: Outlet, connection: Connection) {
    let span = info_span!(
        "etcd",
        endpoints = %config.endpoints.join(","),
        prefix = %keys::normalize_prefix(&config.prefix)
    );
    run(config, outlet, connection).instrument(span).await
}

async fn run(config: EtcdConfig, snapshots: Outlet, connection: Connection) {
    let options = match connect_options(&config) {
        Ok(options) => options,
        Err(error) => {
            error!("the etcdv3 datastore cannot start: {error:#}");
            return;
        }
    };
    let prefix = keys::normalize_prefix(&config.prefix);
    let mut link = Link::new("etcd", connection);
    // etcd with --client-cert-auth closes a TLS connection without a client certificate after
    // the handshake, which the client only reports as a closed connection.
    let hint = (config.ca_cert_file.is_some() && config.cert_file.is_none()).then_some(
        "if etcd requires client certificates, set --etcd-cert-file and --etcd-key-file \
         (ETCD_CERT_FILE, ETCD_KEY_FILE)",
    );
    let mut retry = Retry::default();
    loop {
        let ended = tokio::select! {
            ended = session(&config, &options, &prefix, &snapshots, &mut link) => ended,
            _ = snapshots.closed() => return,
        };
        let Err(error) = ended else { return };
        if !retry.after(&mut link, &error, hint.unwrap_or_default(), snapshots.closed()).await {
            return;
        }
    }
}

/// Why a watch ended without an error.
enum Followed {
    /// etcd cancelled the watch (compaction past its revision, or another reason): read again.
    Resync(String),
    /// Nobody listens to the snapshots any more.
    Closed,
}

/// One connection: read, watch, and read again after every cancelled watch. `Ok` when nobody
/// listens any more; an error when etcd cannot be reached or the connection breaks.
async fn session(
    config: &EtcdConfig,
    options: &ConnectOptions,
    prefix: &str,
    snapshots: &Outlet,
    link: &mut Link,
) -> anyhow::Result<()> {
    // "a, b" in ETCD_ENDPOINTS leaves a space before b.
    let endpoints: Vec<&str> = config.endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
    let client = timed(Client::connect(&endpoints, Some(options.clone()))).await.context("connecting to etcd")?;
    loop {
        let started = Instant::now();
        let (mut cache, revision) = read_all(&client, prefix, snapshots.gives_blocks()).await?;
        link.read(cache.len(), started.elapsed());
        debug!(revision, "read at this revision; watching from the next");
        // Sent even when equal to what the agent has: after a reconnect or a compaction the
        // agent resyncs the dataplane from the fresh read.
        let mut problems = Vec::new();
        if !snapshots.whole(&mut cache, &mut problems) {
            return Ok(());
        }
        match follow(&client, prefix, &mut cache, revision, snapshots, &mut problems).await? {
            Followed::Resync(reason) => warn!("{reason}; reading every key again"),
            Followed::Closed => return Ok(()),
        }
    }
}

/// Reads every key of the dataplane's directories at one revision; returns the keys and the
/// revision.
///
/// Converting a page costs about what etcd takes to serve the next one, so a blocking thread
/// converts each page while the next is read.
async fn read_all(client: &Client, prefix: &str, giving_blocks: bool) -> anyhow::Result<(Cache, i64)> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let (pages_out, mut pages_in) = mpsc::channel::<Vec<KeyValue>>(PAGES_AHEAD);
    let mut cache = if giving_blocks { Cache::giving_blocks(prefix) } else { Cache::new(prefix) };
    let converter = tokio::task::spawn_blocking(move || {
        let mut busy = Duration::ZERO;
        while let Some(page) = pages_in.blocking_recv() {
            let started = Instant::now();
            for pair in &page {
                cache.put(pair.key(), pair.value());
            }
            busy += started.elapsed();
        }
        (cache, busy)
    });
    // 0 until the first response tells the store's revision; every later page is read at it, so
    // that the whole read is one consistent view.
    let mut revision = 0;
    // Where the read's time goes: waiting for etcd's pages (etcd, the transport and the gRPC
    // decoding), converting the keys (ours, meanwhile), and the conversion left after the
    // last page.
    let (mut waited, mut pages) = (Duration::ZERO, 0);
    for directory in keys::DIRECTORIES {
        let directory = format!("{prefix}{directory}");
        let end = keys::range_end(directory.as_bytes());
        let mut start = directory.clone().into_bytes();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let asked = Instant::now();
            let mut response = timed(kv.get(start.clone(), Some(options)))
                .await
                .with_context(|| format!("reading {directory} from etcd"))?;
            waited += asked.elapsed();
            pages += 1;
            if revision == 0 {
                revision = response
                    .header()
                    .map(|header| header.revision())
                    .context("etcd's answer has no header with the store's revision")?;
            }
            let more = response.more();
            let page = response.take_kvs();
            // The next page starts just after the last key read.
            let next = page.last().map(|last| {
                let mut next = last.key().to_vec();
                next.push(0);
                next
            });
            if !page.is_empty() && pages_out.send(page).await.is_err() {
                bail!("the conversion of etcd's keys stopped");
            }
            match next {
                Some(next) if more => start = next,
                _ => break,
            }
        }
    }
    drop(pages_out);
    let last_page = Instant::now();
    let (cache, converted) = converter.await.context("the conversion of etcd's keys stopped")?;
    info!(
        pages,
        waited_ms = waited.as_millis() as u64,
        converted_ms = converted.as_millis() as u64,
        after_last_page_ms = last_page.elapsed().as_millis() as u64,
        "read every key: time waiting for etcd's pages, converting them meanwhile, and after the last"
    );
    Ok((cache, revision))
}

/// Follows the watch from `revision + 1`, applying changes to `cache` and sending a snapshot
/// after each burst that changed a key's meaning (the cache tells, so a large cluster's snapshot
/// is not compared with the last one sent); `problems` are those of the last snapshot sent.
async fn follow(
    client: &Client,
    prefix: &str,
    cache: &mut Cache,
    revision: i64,
    snapshots: &Outlet,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Followed> {
    let from = revision + 1;
    let options = || WatchOptions::new().with_prefix().with_start_revision(from);
    let mut directories = keys::DIRECTORIES.iter().map(|directory| format!("{prefix}{directory}"));
    let first = directories.next().context("no directory to watch")?;
    let mut watcher = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let mut stream = timed(watcher.watch(first, Some(options()))).await.context("opening the etcd watch")?;
    for directory in directories {
        stream.watch(directory, Some(options())).await.context("opening the etcd watch")?;
    }
    debug!(from, "watching");
    // The first and the latest change of the burst not yet sent.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let deadline = pending.map(|(first, latest)| (latest + QUIET).min(first + MAX_DELAY));
        let message = tokio::select! {
            message = stream.message() => message,
            _ = sleep_until(deadline), if deadline.is_some() => {
                let first = pending.take().map(|(first, _)| first);
                if !snapshots.burst(cache, problems) {
                    return Ok(Followed::Closed);
                }
                debug!(since_change_ms = first.map(|at| at.elapsed().as_millis() as u64), "changes sent");
                continue;
            }
        };
        let response = message.context("the etcd watch broke")?.context("etcd closed the watch stream")?;
        if let Some(reason) =
            cancelled(response.canceled(), response.compact_revision(), response.cancel_reason(), from)
        {
            return Ok(Followed::Resync(reason));
        }
        let mut changed = false;
        for event in response.events() {
            let Some(pair) = event.kv() else {
                continue;
            };
            changed |= match event.event_type() {
                EventType::Put => cache.put(pair.key(), pair.value()),
                EventType::Delete => cache.delete(pair.key()),
            };
        }
        if changed {
            let now = Instant::now();
            pending = Some((pending.map_or(now, |(first, _)| first), now));
        }
    }
}

/// Why the watch that started at revision `from` was cancelled, if it was. A watch whose start
/// revision etcd has compacted away comes back cancelled with the compaction's revision: the
/// changes in between are lost to it, so everything must be read again.
fn cancelled(canceled: bool, compact_revision: i64, reason: &str, from: i64) -> Option<String> {
    if compact_revision > 0 {
        return Some(format!(
            "etcd compacted its history up to revision {compact_revision}, past the watch's \
             revision {from}"
        ));
    }
    if canceled {
        let reason = if reason.is_empty() { "no reason given" } else { reason };
        return Some(format!("etcd cancelled the watch from revision {from} ({reason})"));
    }
    None
}

/// A request to etcd with [`REQUEST_TIMEOUT`]; the error tells what etcd (or the connection)
/// said, down to the cause.
async fn timed<T>(request: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(anyhow::anyhow!(describe(&error))),
        Err(_) => bail!("no answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// etcd_client's errors hide their causes (a refused connection, a TLS handshake failure) from
/// `source()`, and a gRPC status prints its source as debug output: say the status's message,
/// then each cause once, e.g. "tcp connect error: Connection refused (os error 111)".
fn describe(error: &etcd_client::Error) -> String {
    let (mut text, mut cause): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        etcd_client::Error::GRpcStatus(status) => (status.message().to_owned(), std::error::Error::source(status)),
        etcd_client::Error::TransportError(transport) => (error.to_string(), std::error::Error::source(transport)),
        other => (other.to_string(), None),
    };
    while let Some(inner) = cause {
        let said = inner.to_string();
        // tonic wraps its causes in a generic "transport error" that says nothing more.
        if !text.contains(&said) && said != "transport error" {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    if text.is_empty() {
        text = error.to_string();
    }
    text
}

/// The client's options from the settings: keepalives, and TLS when certificate files are given.
fn connect_options(config: &EtcdConfig) -> anyhow::Result<ConnectOptions> {
    if config.endpoints.iter().all(|endpoint| endpoint.trim().is_empty()) {
        bail!("no etcd endpoint: set --etcd-endpoints (ETCD_ENDPOINTS), e.g. http://127.0.0.1:2379");
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true);
    match tls_options(config)? {
        Some(tls) => {
            if let Some(plain) = config.endpoints.iter().find(|e| e.trim().starts_with("http://")) {
                bail!(
                    "etcd certificates are set but the endpoint {plain} is plain http: write it \
                     as https://... in --etcd-endpoints (ETCD_ENDPOINTS)"
                );
            }
            options = options.with_tls(tls);
        }
        None => {
            if let Some(secure) = config.endpoints.iter().find(|e| e.trim().starts_with("https://")) {
                bail!(
                    "the endpoint {secure} is https but no CA is set: give the CA that signed \
                     etcd's certificate with --etcd-ca-cert-file (ETCD_CA_CERT_FILE)"
                );
            }
        }
    }
    Ok(options)
}

/// TLS from the three certificate settings; `None` when none is set.
fn tls_options(config: &EtcdConfig) -> anyhow::Result<Option<TlsOptions>> {
    let ca = read_pem(config.ca_cert_file.as_deref(), "--etcd-ca-cert-file", "ETCD_CA_CERT_FILE")?;
    let cert = read_pem(config.cert_file.as_deref(), "--etcd-cert-file", "ETCD_CERT_FILE")?;
    let key = read_pem(config.key_file.as_deref(), "--etcd-key-file", "ETCD_KEY_FILE")?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(cert, key)),
        (None, None) => None,
        (Some(_), None) => bail!(
            "--etcd-cert-file (ETCD_CERT_FILE) is set but --etcd-key-file (ETCD_KEY_FILE) is not: \
             a client certificate needs its key"
        ),
        (None, Some(_)) => bail!(
            "--etcd-key-file (ETCD_KEY_FILE) is set but --etcd-cert-file (ETCD_CERT_FILE) is \
             not: a client key needs its certificate"
        ),
    };
    let Some(ca) = ca else {
        if identity.is_some() {
            bail!(
                "a client certificate is set but no CA: give the CA that signed etcd's \
                 certificate with --etcd-ca-cert-file (ETCD_CA_CERT_FILE)"
            );
        }
        return Ok(None);
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// Reads a PEM file named by a setting; errors name the file and the setting.
fn read_pem(path: Option<&Path>, flag: &str, env: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text =
        std::fs::read(path).with_context(|| format!("cannot read {} given by {flag} ({env})", path.display()))?;
    if !text.windows(11).any(|window| window == b"-----BEGIN ") {
        bail!("{} given by {flag} ({env}) is not a PEM file (no -----BEGIN line)", path.display());
    }
    Ok(Some(text))
}

/// [`watch`] on a thread of its own, for callers that have no runtime (tests, one-shot
/// commands).
pub fn watch_thread(config: EtcdConfig) -> anyhow::Result<WatchThread> {
    WatchThread::spawn("etcd", move |snapshots, connection| watch(config, snapshots, connection))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            prefix: "/calico".into(),
            ..EtcdConfig::default()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dataplane-etcd-unit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn plain_endpoints_need_nothing_else() {
        config(&["http://127.0.0.1:2379"]).check().expect("plain http is fine");
        let error = config(&[]).check().expect_err("no endpoint");
        assert!(format!("{error:#}").contains("ETCD_ENDPOINTS"), "{error:#}");
        let error = config(&["https://127.0.0.1:2379"]).check().expect_err("https without a CA");
        assert!(format!("{error:#}").contains("ETCD_CA_CERT_FILE"), "{error:#}");
    }

    #[test]
    fn certificate_errors_name_the_file_and_the_setting() {
        let dir = temp_dir("certs");
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").expect("write");
        let not_pem = dir.join("junk.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let missing = dir.join("missing.pem");

        let mut settings = config(&["https://127.0.0.1:2379"]);
        settings.ca_cert_file = Some(missing.clone());
        let text = format!("{:#}", settings.check().expect_err("missing CA"));
        assert!(text.contains("missing.pem") && text.contains("ETCD_CA_CERT_FILE"), "{text}");

        settings.ca_cert_file = Some(pem.clone());
        settings.cert_file = Some(not_pem);
        settings.key_file = Some(pem.clone());
        let text = format!("{:#}", settings.check().expect_err("junk certificate"));
        assert!(text.contains("junk.txt") && text.contains("--etcd-cert-file"), "{text}");

        settings.cert_file = Some(pem.clone());
        settings.key_file = Some(missing);
        let text = format!("{:#}", settings.check().expect_err("missing key"));
        assert!(text.contains("missing.pem") && text.contains("ETCD_KEY_FILE"), "{text}");

        settings.key_file = None;
        let text = format!("{:#}", settings.check().expect_err("certificate without key"));
        assert!(text.contains("ETCD_KEY_FILE"), "{text}");

        settings.key_file = Some(pem.clone());
        settings.check().expect("CA, certificate and key");
        settings.endpoints = vec!["http://127.0.0.1:2379".into()];
        let text = format!("{:#}", settings.check().expect_err("TLS on a plain endpoint"));
        assert!(text.contains("https://"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn describe_keeps_the_message() {
        let error = etcd_client::Error::InvalidArgs("empty endpoints".into());
        assert_eq!(describe(&error), "invalid arguments: empty endpoints");
    }

    #[test]
    fn a_cancelled_watch_means_a_fresh_read() {
        assert_eq!(cancelled(false, 0, "", 12), None);
        let compacted = cancelled(true, 40, "mvcc: required revision has been compacted", 12).expect("compacted");
        assert!(compacted.contains("40") && compacted.contains("12"), "{compacted}");
        let other = cancelled(true, 0, "", 12).expect("cancelled");
        assert!(other.contains("no reason given"), "{other}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unusable_settings_end_the_watch() {
        let (sender, receiver) = watch::channel(None);
        tokio::time::timeout(Duration::from_secs(5), watch(config(&[]), sender, Connection::default()))
            .await
            .expect("returns at once");
        assert!(receiver.borrow().is_none());
    }
}
