//! Cluster mode on NATS JetStream (issue 16): real `nats-server`s (tests/src/nats.rs),
//! real `mailpush run` nodes, recording HTTP endpoints as drivers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mailpush_core::Transaction;
use mailpush_e2e::nats::{nats_or_skip, owned, settled, NatsCluster, NatsServer};
use mailpush_e2e::*;

/// A node's config: `cluster` servers, one webhook driver per endpoint. The driver's CPU
/// deadline is generous: on a loaded two-core machine a 100 ms deadline runs out after a
/// request was sent, and the retry is a duplicate that has nothing to do with the cluster.
fn node_config(
    dir: &Path,
    name: &str,
    servers: &str,
    endpoints: &[String],
    extra: &str,
) -> std::path::PathBuf {
    let mut drivers = String::new();
    for (i, url) in endpoints.iter().enumerate() {
        let key = if i == 0 {
            "push_notification_driver".to_string()
        } else {
            format!("push_notification_driver{}", i + 1)
        };
        drivers.push_str(&format!(
            " {key} = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private concurrency=16 timeout_msecs=5000 retry=100ms,200ms,400ms,800ms,1s,2s,2s,2s\n",
            guest("webhook").display()
        ));
    }
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = {name}-state\n listen = 127.0.0.1:0\n cluster = {servers}\n cluster_node = {name}\n cluster_lease_msecs = 3000\n{extra}}}\nplugin {{\n{drivers}}}\n"
        ),
    )
    .unwrap();
    conf
}

fn txn_line(user: &str, id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M-{id}\"}}]}}\n")
}

/// POSTs an NDJSON batch until it is accepted; returns the 503s seen on the way.
async fn post(addr: SocketAddr, body: &str) -> usize {
    post_ndjson(addr, body, Duration::from_millis(100)).await
}

/// Per user, the ids an endpoint received, in arrival order.
fn received(server: &RecordingServer) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in server.requests() {
        let t = Transaction::from_json(&r.body_text()).expect("canonical JSON");
        out.entry(t.user).or_default().push(t.id);
    }
    out
}

/// Waits until `server` received every id of `sent`; then checks each user's order (by
/// first arrival); returns how many arrived more than once.
async fn all_delivered(
    server: &RecordingServer,
    sent: &BTreeMap<String, Vec<String>>,
    limit: Duration,
    what: &str,
) -> usize {
    let deadline = Instant::now() + limit;
    let got = loop {
        let got = received(server);
        let missing: usize = sent
            .iter()
            .map(|(u, ids)| {
                let g = got.get(u);
                ids.iter()
                    .filter(|id| !g.is_some_and(|g| g.contains(id)))
                    .count()
            })
            .sum();
        if missing == 0 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing} transaction(s) never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut duplicates = 0;
    for (user, ids) in sent {
        let arrived = &got[user];
        let mut first: Vec<&String> = Vec::new();
        for id in arrived {
            if first.contains(&id) {
                duplicates += 1;
            } else {
                first.push(id);
            }
        }
        let expected: Vec<&String> = ids.iter().collect();
        if first != expected {
            let at = first.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "{what}: {user}'s order differs at {at:?}: got {:?}, sent {:?}; arrivals: {:?}",
                at.map(|i| &first[i..(i + 3).min(first.len())]),
                at.map(|i| &expected[i..(i + 3).min(expected.len())]),
                arrived
            );
        }
    }
    duplicates
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(mailpush_bin())
        .args(args)
        .output()
        .expect("run mailpush");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `mailpush dlq list -c conf` once its output satisfies `done` (within 30 s).
async fn dlq_list_until(conf: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = cli(&["dlq", "list", "-c", conf]);
        assert!(ok, "{out}");
        if done(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One node on one NATS server: ingest stores in JetStream and the node delivers, in
/// order per user; a transaction given up on is a dead letter in JetStream, listed and
/// replayed by `mailpush dlq`; a client's retry of an id is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn one_node_delivers_through_jetstream() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = node_config(dir.path(), "solo", &nats.url(), &[server.url("/h")], "");
    let node = RunningDaemon::start(&conf);
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut body = String::new();
    for i in 0..200 {
        let user = format!("u{}@example.com", i % 20);
        let id = format!("t{i}");
        body.push_str(&txn_line(&user, &id));
        sent.entry(user).or_default().push(id);
    }
    post(node.addr, &body).await;
    // The same batch again: stored once.
    post(node.addr, &body).await;
    let dup = all_delivered(&server, &sent, Duration::from_secs(60), "one node").await;
    assert_eq!(dup, 0);
    assert_eq!(server.requests().len(), 200);

    // A 400: a dead letter in JetStream; `mailpush dlq` lists and replays it. The replay
    // fails the same way at once (within the de-duplication window): a dead letter again,
    // not a duplicate dropped; replayed again, it is delivered.
    server.script([Reply::status(400), Reply::status(400)]);
    post(node.addr, &txn_line("dl@example.com", "dead-1")).await;
    let conf_arg = conf.to_str().unwrap();
    let dead_letter_listed = || dlq_list_until(conf_arg, |out| out.contains("dead-1"));
    let listed = dead_letter_listed().await;
    assert!(listed.contains("webhook answered 400"), "{listed}");
    let (ok, out) = cli(&["dlq", "replay", "--all", "-c", conf_arg]);
    assert!(ok && out.starts_with("1 dead letter(s)"), "{out}");
    dead_letter_listed().await;
    let (ok, out) = cli(&["dlq", "replay", "--all", "-c", conf_arg]);
    assert!(ok && out.starts_with("1 dead letter(s)"), "{out}");
    // 200, the two 400s, the replay delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.requests().len() < 203 {
        assert!(
            Instant::now() < deadline,
            "the replay was not delivered:\n{}\n{}",
            node.log.lock().unwrap(),
            mailpush_e2e::nats::http_get(nats.monitor_port(), "/jsz?consumers=true")
                .map(|r| r.1)
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = server.requests();
    assert!(got[202].body_text().contains("dead-1"));
    let (ok, out) = cli(&["dlq", "list", "-c", conf_arg]);
    assert!(ok && !out.contains("dead-1"), "{out}");

    // One batch of more transactions than the JetStream client lets await their
    // acknowledgement at once (5000): stored and delivered, not a node wedged.
    let mut big: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut body = String::new();
    for i in 0..6000 {
        let user = format!("big{}@example.com", i % 50);
        let id = format!("b{i}");
        body.push_str(&txn_line(&user, &id));
        big.entry(user).or_default().push(id);
    }
    post(node.addr, &body).await;
    let dup = all_delivered(&server, &big, Duration::from_secs(120), "one big batch").await;
    assert_eq!(dup, 0);

    // Status shows the cluster.
    let c = daemon_status(node.addr)
        .await
        .cluster
        .expect("cluster status");
    assert_eq!(c.node, "solo");
    assert_eq!(c.owned.len(), 32, "one node owns every partition");
    assert!(c.connected);
    drop(node);
}

/// The kill test: 3 nodes on one NATS, 20,000 transactions of 2,000 users posted round
/// robin to all three, one node SIGKILLed mid-load, then a fourth node started. Every
/// transaction reaches both drivers' endpoints, each user's in order; the duplicates are
/// counted and are all of partitions the killed node delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_load_loses_nothing() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let endpoints = [
        RecordingServer::start().await,
        RecordingServer::start().await,
    ];
    let urls: Vec<String> = endpoints.iter().map(|e| e.url("/h")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<RunningDaemon>> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            Some(RunningDaemon::start(&node_config(
                dir.path(),
                n,
                &nats.url(),
                &urls,
                "",
            )))
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.addr).collect();
    settled(&addrs, 32, Duration::from_secs(30)).await;

    let (total, users, batch) = (20_000, 2_000, 100);
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut killed_owned = Vec::new();
    let mut alive: Vec<usize> = vec![0, 1, 2];
    for b in 0..total / batch {
        if b == total / batch / 2 {
            // Mid-load: SIGKILL n2 (what it owned is what may come twice).
            killed_owned = owned(addrs[1]).await;
            if let Some(mut n) = nodes[1].take() {
                n.child.kill().unwrap();
                n.child.wait().unwrap();
            }
            alive.retain(|i| *i != 1);
        }
        let mut body = String::new();
        for i in b * batch..(b + 1) * batch {
            let user = format!("u{}@example.com", i % users);
            let id = format!("t{i}");
            body.push_str(&txn_line(&user, &id));
            sent.entry(user).or_default().push(id);
        }
        post(addrs[alive[b % alive.len()]], &body).await;
    }
    // A fourth node joins and takes its share.
    let n4 = RunningDaemon::start(&node_config(dir.path(), "n4", &nats.url(), &urls, ""));
    let live = [addrs[0], addrs[2], n4.addr];
    settled(&live, 32, Duration::from_secs(30)).await;
    assert!(
        !owned(n4.addr).await.is_empty(),
        "the new node took partitions"
    );

    for (i, e) in endpoints.iter().enumerate() {
        let duplicates = all_delivered(
            e,
            &sent,
            Duration::from_secs(300),
            &format!("driver {}", i + 1),
        )
        .await;
        // Every duplicate is of a partition the killed node delivered.
        let got = received(e);
        let mut seen: HashMap<&String, usize> = HashMap::new();
        for ids in got.values() {
            for id in ids {
                *seen.entry(id).or_default() += 1;
            }
        }
        let stray: Vec<&String> = got
            .iter()
            .filter(|(u, _)| !killed_owned.contains(&mailpush::cluster::partition_of(u, 32)))
            .flat_map(|(_, ids)| ids.iter())
            .filter(|id| seen[id] > 1)
            .collect();
        if !stray.is_empty() {
            for n in nodes.iter().flatten().chain([&n4]) {
                for l in n.log.lock().unwrap().lines() {
                    let about_stray = stray.iter().any(|id| l.contains(&format!("txn={id} ")));
                    if l.contains("cluster::") || l.contains("left to the") || about_stray {
                        eprintln!("{l}");
                    }
                }
            }
        }
        assert!(
            stray.is_empty(),
            "duplicates outside the killed node's partitions (killed node owned {killed_owned:?}): {stray:?}"
        );
        eprintln!(
            "driver {}: {} transactions, {duplicates} delivered twice (killed node owned {} partitions)",
            i + 1,
            total,
            killed_owned.len()
        );
    }
    drop(nodes);
    drop(n4);
}

/// Posts `n` transactions (ids `{tag}-i`, 50 users) in batches of 50 to `addrs` in turn,
/// recording each as sent once its batch was accepted; returns the 503s seen.
async fn post_load(
    addrs: Vec<SocketAddr>,
    tag: &str,
    n: usize,
    sent: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
) -> usize {
    let mut refused = 0;
    for b in 0..n / 50 {
        let mut body = String::new();
        let mut batch = Vec::new();
        for i in b * 50..(b + 1) * 50 {
            let user = format!("{tag}-u{}@example.com", i % 50);
            let id = format!("{tag}-{i}");
            body.push_str(&txn_line(&user, &id));
            batch.push((user, id));
        }
        refused += post(addrs[b % addrs.len()], &body).await;
        let mut s = sent.lock().unwrap();
        for (u, id) in batch {
            s.entry(u).or_default().push(id);
        }
    }
    refused
}

/// Three NATS servers, replicas = 3: one server killed mid-load loses no acknowledged
/// transaction, and delivery goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_killed_in_a_three_server_cluster_loses_nothing() {
    if !nats_or_skip() {
        return;
    }
    let mut nats = NatsCluster::start();
    let servers = nats.urls().join(",");
    let endpoint = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<RunningDaemon> = ["a", "b"]
        .iter()
        .map(|n| {
            RunningDaemon::start(&node_config(
                dir.path(),
                n,
                &servers,
                &[endpoint.url("/h")],
                " cluster_replicas = 3\n",
            ))
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let t0 = Instant::now();
    settled(&addrs, 32, Duration::from_secs(30)).await;
    eprintln!("settled after {:?}", t0.elapsed());
    let sent = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let load = tokio::spawn(post_load(addrs.clone(), "r3", 4000, sent.clone()));
    // Mid-load: one NATS server goes.
    while sent.lock().unwrap().values().map(Vec::len).sum::<usize>() < 2000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("half posted after {:?}", t0.elapsed());
    nats.kill(1);
    let refused = load.await.unwrap();
    eprintln!("all posted after {:?}", t0.elapsed());
    if std::env::var_os("MAILPUSH_DEBUG_NATS").is_some() {
        eprintln!("{}", nats.logs());
    }
    let sent = sent.lock().unwrap().clone();
    let delivered = tokio::spawn({
        let (endpoint, sent) = (endpoint.clone(), sent.clone());
        async move { all_delivered(&endpoint, &sent, Duration::from_secs(120), "R3").await }
    });
    let duplicates = match delivered.await {
        Ok(d) => d,
        Err(e) => {
            for a in &addrs {
                let (_, _, body) = http_request(*a, "GET", "/v1/status", &[], b"").await;
                eprintln!("{body}");
            }
            for n in &nodes {
                eprintln!("{}", n.log.lock().unwrap());
            }
            std::panic::resume_unwind(e.into_panic());
        }
    };
    eprintln!("R3, a NATS server killed: 4000 acknowledged, all delivered after {:?}; {refused} ingest 503s, {duplicates} duplicates", t0.elapsed());
}

/// NATS stopped for 10 s under load: ingest answers 503 meanwhile, nothing acknowledged
/// is lost, delivery resumes without restarting mailpush.
#[tokio::test(flavor = "multi_thread")]
async fn nats_down_for_ten_seconds_loses_nothing() {
    if !nats_or_skip() {
        return;
    }
    let mut nats = NatsServer::start();
    let endpoint = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = RunningDaemon::start(&node_config(
        dir.path(),
        "solo",
        &nats.url(),
        &[endpoint.url("/h")],
        "",
    ));
    settled(&[node.addr], 32, Duration::from_secs(30)).await;
    let sent = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let load = tokio::spawn(post_load(vec![node.addr], "down", 3000, sent.clone()));
    while sent.lock().unwrap().values().map(Vec::len).sum::<usize>() < 1000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.stop();
    // While NATS is down, ingest refuses with Retry-After.
    let (s, h, b) = http_request(
        node.addr,
        "POST",
        "/v1/transactions",
        &[],
        txn_line("probe@example.com", "probe-1").as_bytes(),
    )
    .await;
    assert_eq!(s, 503, "{b}");
    assert!(h.iter().any(|(k, _)| k == "retry-after"), "{h:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    nats.restart();
    let refused = load.await.unwrap();
    assert!(refused > 0, "ingest refused while NATS was down");
    let sent = sent.lock().unwrap().clone();
    let duplicates = all_delivered(&endpoint, &sent, Duration::from_secs(120), "NATS down").await;
    eprintln!("NATS down 10 s: 3000 acknowledged, all delivered; {refused} ingest 503s, {duplicates} duplicates");
}

/// `mailpush metadata set` with node A's config changes what node B's ox driver sends.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_set_on_one_node_reaches_another_nodes_ox() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let ox = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = |name: &str| {
        let path = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &path,
            format!(
                "mailpush {{\n state_dir = {name}-state\n listen = 127.0.0.1:0\n cluster = {}\n cluster_node = {name}\n cluster_lease_msecs = 3000\n}}\nplugin {{\n push_notification_driver = ox:url={} user_from_metadata cache_lifetime=0s\n}}\n",
                nats.url(),
                ox.url("/preliminary/http-notify/v1/notify")
            ),
        )
        .unwrap();
        path
    };
    let (conf_a, conf_b) = (conf("a"), conf("b"));
    let a = RunningDaemon::start(&conf_a);
    let b = RunningDaemon::start(&conf_b);
    settled(&[a.addr, b.addr], 32, Duration::from_secs(30)).await;
    // A user whose partition node B delivers.
    let b_owns = owned(b.addr).await;
    let user = (0..)
        .map(|i| format!("bob{i}@example.com"))
        .find(|u| b_owns.contains(&mailpush::cluster::partition_of(u, 32)))
        .unwrap();
    let new_mail = |id: &str, uid: u32| {
        format!("{{\"id\":\"{id}\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MessageNew\",\"mailbox\":\"INBOX\",\"uid\":{uid},\"uid_validity\":9}}]}}\n")
    };
    let key = "/private/vendor/vendor.dovecot/http-notify";
    for (value, id, uid) in [("user=77@9", "m1", 1), ("user=88@9", "m2", 2)] {
        let (ok, out) = cli(&[
            "metadata",
            "set",
            "-u",
            &user,
            "-s",
            "",
            key,
            value,
            "-c",
            conf_a.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        let want = ox.requests().len() + 1;
        post(a.addr, &new_mail(id, uid)).await;
        let got = ox.wait_for(want, Duration::from_secs(30)).await;
        let body = got[want - 1].body_text();
        let expect = format!("\"user\":\"{}\"", value.trim_start_matches("user="));
        assert!(body.contains(&expect), "{body}");
        assert!(body.contains(&format!("\"imap-uid\":{uid}")), "{body}");
    }
    // A user too long for a NATS subject is refused with why (not a closed connection).
    let long = format!("{}@example.com", "x".repeat(4000));
    let (ok, out) = cli(&[
        "metadata",
        "set",
        "-u",
        &long,
        "-s",
        "",
        key,
        "user=1@1",
        "-c",
        conf_a.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("is too long for METADATA in cluster mode"),
        "{out}"
    );
    // The value reads back from node B's config too.
    let out = std::process::Command::new(mailpush_bin())
        .args(["metadata", "get", "-u", &user, "-s", "", key, "-c"])
        .arg(&conf_b)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "user=88@9\n");
}

/// Config drift: three nodes, one with a different driver set. Every node's status names
/// it, its `/readyz` answers 503 saying why, the others stay ready; `mailpush status`
/// shows it. A node with another partition count is refused at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_drivers_differ_is_named_and_not_ready() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let endpoint = RecordingServer::start().await;
    let url = endpoint.url("/h");
    let dir = tempfile::tempdir().unwrap();
    let same = vec![url.clone()];
    let other = vec![url.clone(), url.clone()];
    let a = RunningDaemon::start(&node_config(dir.path(), "a", &nats.url(), &same, ""));
    let b = RunningDaemon::start(&node_config(dir.path(), "b", &nats.url(), &same, ""));
    let odd_conf = node_config(dir.path(), "odd", &nats.url(), &other, "");
    let odd = RunningDaemon::start(&odd_conf);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut named = true;
        for n in [&a, &b, &odd] {
            let (_, _, body) = http_request(n.addr, "GET", "/v1/status", &[], b"").await;
            let status: mailpush::status::Status = serde_json::from_str(&body).unwrap();
            let c = status.cluster.expect("cluster status");
            named &= c.nodes.len() == 3 && c.drift == vec!["odd".to_string()];
        }
        if named {
            break;
        }
        assert!(Instant::now() < deadline, "the odd node was never named");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _, body) = http_request(odd.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("config drift"), "{body}");
    for n in [&a, &b] {
        let (s, _, body) = http_request(n.addr, "GET", "/readyz", &[], b"").await;
        assert_eq!(s, 200, "{body}");
    }
    // `mailpush status` reads `listen` from the config: the port the node got.
    let cli_conf = dir.path().join("odd-cli.conf");
    let text = std::fs::read_to_string(&odd_conf).unwrap();
    std::fs::write(
        &cli_conf,
        text.replace("127.0.0.1:0", &odd.addr.to_string()),
    )
    .unwrap();
    let (ok, out) = cli(&["status", "-c", cli_conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    let odd_row = out.lines().find(|l| l.trim_start().starts_with("odd"));
    assert!(
        odd_row.is_some_and(|l| l.to_lowercase().contains("config drift")),
        "{out}"
    );
    // A node with another partition count is refused at start (and the stream keeps
    // its count: the running nodes go on).
    let wrong = node_config(
        dir.path(),
        "wrong",
        &nats.url(),
        &same,
        " cluster_partitions = 64\n",
    );
    let mut child = std::process::Command::new(mailpush_bin())
        .args(["run", "-c", wrong.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node with 64 partitions was not refused");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("was created with 32 partitions")
            && stderr.contains("cluster_partitions = 64"),
        "{stderr}"
    );
    let (_, _, body) = http_request(a.addr, "GET", "/v1/status", &[], b"").await;
    let status: mailpush::status::Status = serde_json::from_str(&body).unwrap();
    assert_eq!(status.cluster.expect("cluster status").partitions, 32);
}

/// A Lua script's METADATA writes go to the cluster's bucket: read back by the script at
/// once, and by `mailpush metadata get` through another node's config.
#[tokio::test(flavor = "multi_thread")]
async fn a_lua_scripts_metadata_writes_reach_the_bucket() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("seen.lua"),
        "function dovecot_lua_notify_begin_txn(user) return { user = user } end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           ctx.user:metadata_set('/private/lua-seen', e.mailbox)\n\
           local v = ctx.user:metadata_get('/private/lua-seen')\n\
           if v ~= e.mailbox then error('read back ' .. tostring(v)) end\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    )
    .unwrap();
    let conf = |name: &str| {
        let path = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &path,
            format!(
                "mailpush {{\n state_dir = {name}-state\n listen = 127.0.0.1:0\n cluster = {}\n cluster_node = {name}\n}}\nplugin {{\n push_notification_driver = lua:file=seen.lua retry=none\n}}\n",
                nats.url(),
            ),
        )
        .unwrap();
        path
    };
    let (conf_a, conf_b) = (conf("a"), conf("b"));
    let a = RunningDaemon::start(&conf_a);
    settled(&[a.addr], 32, Duration::from_secs(30)).await;
    post(a.addr, &txn_line("carol@example.com", "t1")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(mailpush_bin())
            .args([
                "metadata",
                "get",
                "-u",
                "carol@example.com",
                "-s",
                "",
                "/private/lua-seen",
                "-c",
            ])
            .arg(&conf_b)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "M-t1\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the script's write never reached the bucket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server that wants a user and password, given in the `cluster` URL (percent-encoded,
/// as URLs are): the node logs in (the NATS client does not send a URL's userinfo by
/// itself) and delivers; the password is nowhere in its log, debug lines included.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_server_url_log_in() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start_with_password("mp", "s@cret-9");
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url().replace("nats://", "nats://mp:s%40cret-9@");
    let conf = node_config(dir.path(), "authed", &url, &[server.url("/h")], "");
    let node = RunningDaemon::start_with(&conf, &["--log-level", "debug,async_nats=debug"]);
    let sent: BTreeMap<String, Vec<String>> =
        [("a@example.com".to_string(), vec!["auth-1".to_string()])].into();
    tokio::time::timeout(
        Duration::from_secs(60),
        post(node.addr, &txn_line("a@example.com", "auth-1")),
    )
    .await
    .unwrap_or_else(|_| panic!("never accepted:\n{}", node.log.lock().unwrap()));
    all_delivered(&server, &sent, Duration::from_secs(60), "with a password").await;
    let log = node.log.lock().unwrap().clone();
    assert!(log.contains("NATS: connected"), "{log}");
    assert!(
        !log.contains("s@cret-9") && !log.contains("s%40cret-9"),
        "{log}"
    );
    // A wrong password is said as such (not only as JetStream timing out later).
    let wrong = nats.url().replace("nats://", "nats://mp:wrong@");
    let conf = node_config(dir.path(), "refused", &wrong, &[server.url("/h")], "");
    let mut child = std::process::Command::new(mailpush_bin())
        .args(["run", "-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let said = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("the server refused the login"))
    });
    let said = tokio::time::timeout(Duration::from_secs(30), said).await;
    let _ = child.kill();
    let _ = child.wait();
    let line = said.expect("said within 30 s").unwrap().expect("said");
    assert!(
        line.contains("check the credentials") && !line.contains("wrong@"),
        "{line}"
    );
}

/// A transaction larger than NATS's `max_payload` (1 MiB by default, under mailpush's
/// `max_body` of 10 MiB) could never be stored: ingest answers 413 at once instead of
/// 503 after retrying, a hand-off file holding one is set aside (`.rejected`) instead
/// of blocking the directory, and the transactions around it are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_max_payload_is_refused_not_retried() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handoff = dir.path().join("handoff");
    std::fs::create_dir(&handoff).unwrap();
    let big = format!(
        "{{\"id\":\"big\",\"user\":\"u@example.com\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"{}\"}}]}}",
        "m".repeat(1_200_000)
    );
    // Oldest first: the big one, then a small one behind it.
    std::fs::write(handoff.join("a-big.json"), &big).unwrap();
    std::fs::write(
        handoff.join("b-small.json"),
        txn_line("u@example.com", "after-big"),
    )
    .unwrap();
    let conf = node_config(
        dir.path(),
        "solo",
        &nats.url(),
        &[server.url("/h")],
        // (Also: a dead-letter max age under the 2-minute de-duplication window, which
        // nats-server would refuse as the stream's config, starts.)
        " handoff_dir = handoff\n dead_letter_max_age = 1m\n",
    );
    let node = RunningDaemon::start(&conf);
    let (status, _, body) = http_request(
        node.addr,
        "POST",
        "/v1/transactions",
        &[("content-type", "application/json")],
        big.replace("\"big\"", "\"big-post\"").as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_payload"), "{body}");
    let mut sent = BTreeMap::new();
    sent.insert("u@example.com".to_string(), vec!["after-big".to_string()]);
    all_delivered(&server, &sent, Duration::from_secs(60), "after the big one").await;
    assert!(handoff.join("a-big.json.rejected").exists());
    let log = node.wait_for_log("set aside", Duration::from_secs(10));
    assert!(log.contains("NATS max_payload"), "{log}");
}

/// A message on the transaction stream this node cannot read (here a transaction with a
/// field a later mailpush might add, as during a rolling upgrade; then bytes that are
/// not JSON at all) was acknowledged and skipped: lost. Now it is a dead letter of the
/// driver, listed by its id and user with why; the user's next transaction is delivered;
/// a replay publishes it again as it came (so a node that can read it would deliver it),
/// and here it is a dead letter again.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_this_node_cannot_read_is_a_dead_letter_not_lost() {
    if !nats_or_skip() {
        return;
    }
    let nats = NatsServer::start();
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = node_config(dir.path(), "solo", &nats.url(), &[server.url("/h")], "");
    let node = RunningDaemon::start(&conf);
    let user = "later@example.com";
    let subject = format!("mailpush.txn.{}", mailpush::cluster::partition_of(user, 32));
    let later = format!(
        "{{\"id\":\"later-1\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M\"}}],\"priority\":\"high\"}}"
    );
    mailpush_e2e::nats::publish_raw(nats.port(), &subject, later.as_bytes()).unwrap();
    mailpush_e2e::nats::publish_raw(nats.port(), &subject, b"\xff not json").unwrap();
    post(node.addr, &txn_line(user, "after-1")).await;
    let mut sent = BTreeMap::new();
    sent.insert(user.to_string(), vec!["after-1".to_string()]);
    all_delivered(
        &server,
        &sent,
        Duration::from_secs(60),
        "after the unreadable",
    )
    .await;
    assert_eq!(server.requests().len(), 1, "only the readable one was sent");

    let conf_arg = conf.to_str().unwrap();
    let listed = || dlq_list_until(conf_arg, |out| count(out, "cannot read this message") >= 2);
    let out = listed().await;
    assert!(out.contains("later-1") && out.contains(user), "{out}");
    assert!(
        out.contains("unknown field") || out.contains("priority"),
        "{out}"
    );
    assert!(out.contains("not UTF-8"), "{out}");
    node.wait_for_log(
        "is now a dead letter of the driver",
        Duration::from_secs(10),
    );

    // Replayed, it goes out as it came (its unknown field too): a dead letter again,
    // not a transaction without events delivered.
    let (ok, out) = cli(&["dlq", "replay", "--all", "-c", conf_arg]);
    assert!(ok && out.starts_with("2 dead letter(s)"), "{out}");
    let out = listed().await;
    assert!(out.contains("later-1"), "{out}");
    assert_eq!(server.requests().len(), 1, "nothing unreadable was sent");

    // A dead letter whose record would not fit max_payload (the record escapes the
    // transaction's JSON again: 300,000 quotes) is kept in its raw form, not dropped.
    // (The driver gives up on it at once: more than its max_event_bytes.)
    let quotes = format!(
        "{{\"id\":\"quotes-1\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"{}\"}}]}}\n",
        "\\\"".repeat(300_000)
    );
    post(node.addr, &quotes).await;
    let out = dlq_list_until(conf_arg, |out| out.contains("quotes-1")).await;
    assert!(out.contains("max_event_bytes"), "{out}");
    // The not-UTF-8 message was replayed byte for byte: the same reason again.
    assert!(out.contains("not UTF-8"), "{out}");
}
