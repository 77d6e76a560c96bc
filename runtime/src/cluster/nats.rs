//! The connection to NATS and the JetStream objects mailpush uses, by name:
//!
//! | object | name (prefix `MAILPUSH`) | what |
//! |---|---|---|
//! | stream | `MAILPUSH_TXN` | transactions on `mailpush.txn.<partition>`; dead letters replayed to one driver on `mailpush.replay.<driver>.<partition>`; de-duplication by transaction id |
//! | consumers | `MAILPUSH_d<driver>_p<partition>` | one durable pull consumer per driver and partition: its progress |
//! | stream | `MAILPUSH_DLQ` | dead letters on `mailpush.dlq.<driver>` |
//! | bucket | `MAILPUSH_nodes` | live nodes (entries expire after the lease time) |
//! | bucket | `MAILPUSH_leases` | who delivers which partition (compare-and-set, expiring) |
//! | bucket | `MAILPUSH_metadata` | METADATA, for every node |
//!
//! JetStream features relied on, and the server they need: streams, durable pull
//! consumers with explicit acks, `Nats-Msg-Id` de-duplication, key-value buckets with
//! compare-and-set (2.6+); several filter subjects per consumer (2.10+); consumer reset
//! to the ack floor (2.14+). Tested with nats-server 2.15.1.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use mailpush_config::ClusterSettings;

use crate::spool::SpoolError;

/// How long transactions stay in the stream at most (the longest any driver may take,
/// retries included, is `retry_max_age`, 24 h by default).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The de-duplication window: a client's or forwarder's re-send within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Un-acknowledged deliveries a consumer hands out at once (one driver, one partition).
pub const MAX_ACK_PENDING: i64 = 1024;

/// Names and subjects, from the `cluster_stream` prefix.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    /// Lower-cased prefix for subjects.
    pub subject: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
            subject: prefix.to_ascii_lowercase(),
        }
    }
    pub fn txn_stream(&self) -> String {
        format!("{}_TXN", self.prefix)
    }
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.prefix)
    }
    pub fn txn_subject(&self, p: u32) -> String {
        format!("{}.txn.{p}", self.subject)
    }
    pub fn replay_subject(&self, driver: u32, p: u32) -> String {
        format!("{}.replay.{driver}.{p}", self.subject)
    }
    pub fn dlq_subject(&self, driver: u32) -> String {
        format!("{}.dlq.{driver}", self.subject)
    }
    pub fn consumer(&self, driver: u32, p: u32) -> String {
        format!("{}_d{driver}_p{p}", self.prefix)
    }
    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.prefix)
    }
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }
    pub fn metadata_bucket(&self) -> String {
        format!("{}_metadata", self.prefix)
    }
}

/// A NATS error, for the spool's callers (never with credentials: URLs are not part of
/// async-nats' error texts).
pub fn storage(what: &str, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(format!("NATS JetStream: {what}: {e}"))
}

/// Connects to the cluster's servers (reconnecting forever in the background).
pub async fn connect(
    settings: &ClusterSettings,
    name: &str,
) -> Result<async_nats::Client, SpoolError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("mailpush {name}"))
        // A half-open connection is noticed within a few seconds, well inside a lease.
        .ping_interval(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 100).min(1000)))
        .max_reconnects(None)
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS: connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS: disconnected; reconnecting")
                }
                async_nats::Event::ClientError(e) => connect_problem(&e.to_string()),
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                    connect_problem("authorization violation")
                }
                async_nats::Event::ServerError(e) => tracing::warn!("NATS: the server says: {e}"),
                other => tracing::debug!("NATS: {other}"),
            }
        });
    if let Some(path) = &settings.creds_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            SpoolError::Storage(format!("cluster_creds_file {}: {e}", path.display()))
        })?;
    }
    if let Some(path) = &settings.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| {
            SpoolError::Storage(format!("cluster_token_file {}: {e}", path.display()))
        })?;
        opts = opts.token(token.trim().to_string());
    }
    if let Some(ca) = &settings.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    // The client does not send a URL's userinfo (and its debug lines print the URLs):
    // taken out here and given as the connection's user and password, or token.
    let (servers, credentials) = split_credentials(&settings.servers)?;
    match credentials {
        Some((user, password)) if password.is_empty() => opts = opts.token(user),
        Some((user, password)) => opts = opts.user_and_password(user, password),
        None => {}
    }
    opts.connect(servers.as_slice())
        .await
        .map_err(|e| storage("cannot connect", e))
}

/// Logs why connecting fails (a refused login, an unreachable server), at most every
/// 30 s: the client tries again every second.
fn connect_problem(what: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now < last + 30 {
        return;
    }
    LAST.store(now, Ordering::Relaxed);
    let what = mailpush_core::args::redact_text(what);
    let lower = what.to_ascii_lowercase();
    if lower.contains("authoriz") || lower.contains("authenticat") {
        tracing::error!("NATS: the server refused the login ({what}): check the credentials (user:password@ in `cluster`, cluster_creds_file, cluster_token_file); trying again");
    } else {
        tracing::warn!("NATS: {what}; trying again");
    }
}

/// A user and password (an empty password: the user is a token).
type Credentials = (String, String);

/// The server URLs without userinfo, and the one user and password (or token: a user
/// alone) they gave; refused if two URLs give different ones (NATS has one per
/// connection).
pub fn split_credentials(
    servers: &[String],
) -> Result<(Vec<String>, Option<Credentials>), SpoolError> {
    let mut bare = Vec::with_capacity(servers.len());
    let mut credentials: Option<Credentials> = None;
    for s in servers {
        let parsed = s.parse::<http::Uri>().ok();
        match parsed.as_ref().and_then(crate::userinfo::without_userinfo) {
            Some((uri, user, password)) => {
                if credentials
                    .as_ref()
                    .is_some_and(|c| c != &(user.clone(), password.clone()))
                {
                    return Err(SpoolError::Storage(
                        "cluster: the server URLs give different users or passwords; NATS takes one per connection: give every URL the same, or use cluster_creds_file".into(),
                    ));
                }
                credentials = Some((user, password));
                bare.push(uri.to_string());
            }
            None => bare.push(s.clone()),
        }
    }
    Ok((bare, credentials))
}

/// The oldest nats-server mailpush works with: consumer reset (a partition's new owner
/// restarts its consumers from their ack floors) came in 2.14.
pub const MIN_SERVER: (u32, u32) = (2, 14);

/// Refuses a server older than [`MIN_SERVER`] (`version` as the server reports it, e.g.
/// `2.15.1`; unknown: accepted).
pub fn check_version(version: &str) -> Result<(), SpoolError> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(a), Some(b)) if (a, b) < MIN_SERVER => Err(SpoolError::Storage(format!(
            "nats-server {version} is too old: cluster mode needs {}.{} or later (consumer reset)",
            MIN_SERVER.0, MIN_SERVER.1
        ))),
        _ => Ok(()),
    }
}

/// The JetStream context: API calls and publish acknowledgements time out after 5 s.
pub fn jetstream(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone())
}

/// How long a starting node keeps trying to create the streams and buckets while
/// JetStream does not answer in time (a cluster still electing its leaders, or under
/// load) before it refuses to start.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Creates (or updates) the streams and buckets; idempotent, done by every node at start.
/// A JetStream request that times out is tried again, for up to [`SETUP_PATIENCE`].
pub async fn setup(
    js: &jetstream::Context,
    names: &Names,
    settings: &ClusterSettings,
    dead_letter_max_age: Option<Duration>,
) -> Result<(), SpoolError> {
    let until = tokio::time::Instant::now() + SETUP_PATIENCE;
    loop {
        match setup_once(js, names, settings, dead_letter_max_age).await {
            Err(SpoolError::Storage(e))
                if e.contains("timed out") && tokio::time::Instant::now() < until =>
            {
                tracing::warn!("cluster: JetStream did not answer in time ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Refuses a node whose partition count differs from the one the stream was created
/// with (`recorded`, the stream's metadata).
fn check_partitions(
    names: &Names,
    recorded: Option<&String>,
    settings: &ClusterSettings,
) -> Result<(), SpoolError> {
    match recorded {
        Some(p) if p != &settings.partitions.to_string() => Err(SpoolError::Storage(format!(
            "the stream {} was created with {p} partitions, this node has cluster_partitions = {}: the count is fixed for the life of the stream (set cluster_partitions = {p})",
            names.txn_stream(),
            settings.partitions
        ))),
        _ => Ok(()),
    }
}

async fn setup_once(
    js: &jetstream::Context,
    names: &Names,
    settings: &ClusterSettings,
    dead_letter_max_age: Option<Duration>,
) -> Result<(), SpoolError> {
    // The partition count is fixed for the life of the stream: checked before the
    // update below, which would overwrite the stream's record of it with this node's.
    match js.get_stream(names.txn_stream()).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| storage("cannot read the transaction stream", e))?;
            check_partitions(names, info.config.metadata.get("partitions"), settings)?;
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) => {}
        Err(e) => return Err(storage("cannot read the transaction stream", e)),
    }
    js.create_or_update_stream(stream::Config {
        name: names.txn_stream(),
        subjects: vec![
            format!("{}.txn.*", names.subject),
            format!("{}.replay.*.*", names.subject),
        ],
        num_replicas: settings.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: STREAM_MAX_AGE,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        metadata: [("partitions".to_string(), settings.partitions.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .await
    .map_err(|e| storage("cannot create the transaction stream", e))?;
    js.create_or_update_stream(stream::Config {
        name: names.dlq_stream(),
        subjects: vec![format!("{}.dlq.*", names.subject)],
        num_replicas: settings.replicas,
        // (nats-server refuses a window longer than the max age.)
        duplicate_window: dead_letter_max_age
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(120)),
        // `dead_letter_max_age` (0: unlimited); the last node to start sets it.
        max_age: dead_letter_max_age.unwrap_or(Duration::ZERO),
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| storage("cannot create the dead-letter stream", e))?;
    // The nodes bucket leaves a marker when an entry expires, so that watchers see a
    // node go (2.11+).
    for (bucket, max_age, markers) in [
        (
            names.nodes_bucket(),
            settings.lease,
            Some(Duration::from_secs(1)),
        ),
        (names.leases_bucket(), settings.lease, None),
        (names.metadata_bucket(), Duration::ZERO, None),
    ] {
        js.create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            max_age,
            num_replicas: settings.replicas,
            storage: stream::StorageType::File,
            limit_markers: markers,
            ..Default::default()
        })
        .await
        .map_err(|e| storage(&format!("cannot create the bucket {bucket}"), e))?;
    }
    Ok(())
}

/// Makes sure every (driver, partition) consumer exists. One made now starts with what
/// is published from now on (a driver added to a running cluster does not receive the
/// past); one that exists keeps its progress.
pub async fn ensure_consumers(
    js: &jetstream::Context,
    names: &Names,
    drivers: &[u32],
    partitions: u32,
) -> Result<(), SpoolError> {
    let stream = js
        .get_stream(names.txn_stream())
        .await
        .map_err(|e| storage("cannot read the transaction stream", e))?;
    for &driver in drivers {
        for p in 0..partitions {
            let name = names.consumer(driver, p);
            if stream
                .get_consumer::<consumer::pull::Config>(&name)
                .await
                .is_ok()
            {
                continue;
            }
            stream
                .create_consumer(consumer_config(names, driver, p))
                .await
                .map_err(|e| storage(&format!("cannot create the consumer {name}"), e))?;
        }
    }
    Ok(())
}

/// A (driver, partition) consumer: explicit acks, never redelivered by the server while
/// its owner lives (the lane retries; a new owner resets to the ack floor instead).
pub fn consumer_config(names: &Names, driver: u32, p: u32) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names.consumer(driver, p)),
        filter_subjects: vec![names.txn_subject(p), names.replay_subject(driver, p)],
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: STREAM_MAX_AGE,
        max_ack_pending: MAX_ACK_PENDING,
        max_deliver: -1,
        ..Default::default()
    }
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn servers_before_2_14_are_refused() {
        assert!(super::check_version("2.15.1").is_ok());
        assert!(super::check_version("2.14.0").is_ok());
        assert!(super::check_version("3.0.0-beta").is_ok());
        assert!(super::check_version("").is_ok());
        let e = super::check_version("2.10.22").unwrap_err().to_string();
        assert!(
            e.contains("2.10.22 is too old") && e.contains("2.14"),
            "{e}"
        );
    }
}
