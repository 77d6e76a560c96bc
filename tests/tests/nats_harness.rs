//! Smoke test of the NATS JetStream harness (`mailpush_e2e::nats`): a single server and a
//! three-node cluster start healthy, and a killed cluster member restarts healthy.
//!
//! Needs nats-server >= 2.14; `.ci/run` installs 2.15.1. Outside CI the test is skipped
//! (with a message) when it is missing; under CI (`CI` set) a missing server fails.

use std::time::Instant;

use mailpush_e2e::nats::{http_get, nats_or_skip, NatsCluster, NatsServer, CLUSTER_SIZE};

fn jsz(port: u16) -> serde_json::Value {
    let (status, body) = http_get(port, "/jsz").expect("GET /jsz");
    assert_eq!(status, 200, "/jsz: {body}");
    serde_json::from_str(&body).expect("/jsz is JSON")
}

fn js_healthy(port: u16) -> bool {
    matches!(
        http_get(port, "/healthz?js-enabled-only=true"),
        Ok((200, _))
    )
}

#[test]
fn single_server_and_cluster_start_and_restart() {
    if !nats_or_skip() {
        return;
    }
    let t0 = Instant::now();

    // One server: healthy, JetStream on with fsync on every write, restart keeps the port.
    let mut single = NatsServer::start();
    assert!(single.url().starts_with("nats://127.0.0.1:"));
    assert!(js_healthy(single.monitor_port()), "{}", single.log());
    let v = jsz(single.monitor_port());
    assert!(
        v["config"]["store_dir"]
            .as_str()
            .is_some_and(|d| d.starts_with(single.store_dir().to_str().unwrap())),
        "store dir in /jsz: {v}"
    );
    assert_eq!(
        v["config"]["sync_always"], true,
        "sync_interval: always: {v}"
    );
    let url = single.url();
    single.kill();
    assert!(!js_healthy(single.monitor_port()));
    single.restart();
    assert_eq!(single.url(), url);
    assert!(js_healthy(single.monitor_port()), "{}", single.log());
    single.stop();
    assert!(!single.is_running());

    // Three nodes: every one healthy and agreeing on a meta leader of a 3-node cluster.
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    assert_eq!(urls.len(), CLUSTER_SIZE);
    let leaders = agreed_meta(&cluster);

    // Kill the meta leader (the hardest member to lose), restart it, healthy again.
    let victim = (0..CLUSTER_SIZE)
        .find(|&i| cluster.name(i) == leaders[0])
        .expect("leader is one of n1..n3");
    cluster.kill(victim);
    assert!(!cluster.is_running(victim));
    assert!(!js_healthy(cluster.monitor_port(victim)));
    cluster.restart(victim);
    assert_eq!(cluster.urls(), urls);
    agreed_meta(&cluster);
    eprintln!("nats harness smoke test took {:?}", t0.elapsed());
}

/// Reads every node's `/jsz` until all report a 3-node meta cluster with one leader (a
/// member's view settles a moment after the cluster is up), within 30 s; the leaders.
fn agreed_meta(cluster: &NatsCluster) -> Vec<String> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        let mut metas = Vec::new();
        for i in 0..CLUSTER_SIZE {
            assert!(js_healthy(cluster.monitor_port(i)), "{}", cluster.log(i));
            let meta = jsz(cluster.monitor_port(i))["meta_cluster"].clone();
            leaders.push(meta["leader"].as_str().unwrap_or("").to_string());
            metas.push(meta);
        }
        let agreed = metas.iter().all(|m| m["cluster_size"] == 3)
            && !leaders[0].is_empty()
            && leaders.iter().all(|l| l == &leaders[0]);
        if agreed {
            return leaders;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement on a 3-node meta cluster: {metas:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
