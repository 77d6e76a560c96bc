//! Ingest connection hygiene (issue 18): clients that stall mid-headers or mid-body, sit
//! idle, or open more connections than the process has files for cannot stop a small
//! valid request; they are cut and counted. Request bodies are charged to `max_inflight`
//! by the bytes that arrive, so unfinished or chunked requests cannot starve others.

use std::time::Duration;

use mailpush_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn txn_line(user: &str, id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M-{id}\"}}]}}\n")
}

/// A connection from another loopback address (another peer, as far as per-peer caps go).
async fn connect_from(source: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// A metric's value from `/metrics` (0 when absent), asked from 127.0.0.2.
async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let mut c = connect_from([127, 0, 0, 2], addr).await;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = until_closed(c).await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cut(reason: &str) -> String {
    format!("mailpush_ingest_connections_cut_total{{reason=\"{reason}\"}}")
}

/// Reads until the server closes the connection (bounded, so a bug fails the test
/// rather than hanging it).
async fn until_closed(mut c: TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got))
        .await
        .expect("the server never closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// The scenario: `ulimit -n 256`, 300 idle connections, 5 clients stalled in
/// their headers, 5 stalled in their bodies. A small POST still gets 202 within the
/// header timeout, `/healthz` answers, and every stalled client is cut and counted.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_and_idle_clients_do_not_stop_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n header_timeout_msecs = 1500\n body_timeout_msecs = 2000\n idle_timeout_msecs = 60000\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n",
    )
    .unwrap();
    let d = RunningDaemon::start_with_open_files(&conf, 256);
    let log = d.log.lock().unwrap().clone();
    assert!(
        log.contains("max_connections = 1024 lowered to 192"),
        "{log}"
    );

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    // All 300 were accepted: the newest 192 (less the metrics requests') are open.
    let mut open = 0;
    for _ in 0..1000 {
        open = metric(d.addr, "mailpush_ingest_connections_open").await;
        if metric(d.addr, &cut("replaced_idle")).await >= 300 - 192 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(open <= 192, "{open} connections open, above the fitted cap");

    let mut mid_headers = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        c.write_all(b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .unwrap();
        mid_headers.push(c);
    }
    let mut mid_body = Vec::new();
    for i in 0..5 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        let head = if i == 0 {
            "POST /v1/transactions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"us\r\n".to_string()
        } else {
            "POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n{\"user\":"
                .to_string()
        };
        c.write_all(head.as_bytes()).await.unwrap();
        mid_body.push(c);
    }

    // A small valid POST: 202 within the header timeout, though the process has fewer
    // files than there were connections.
    let line = txn_line("a@example.com", "small-1");
    let (s, _, b) = tokio::time::timeout(
        Duration::from_millis(1500),
        http_request(d.addr, "POST", "/v1/transactions", &[], line.as_bytes()),
    )
    .await
    .expect("a small POST waited longer than header_timeout");
    assert_eq!(s, 202, "{b}");
    let (s, _, _) = http_request(d.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(s, 200);

    // Every stalled client is cut: mid-body ones after a 408 answer.
    for c in mid_headers {
        until_closed(c).await;
    }
    for c in mid_body {
        let answer = until_closed(c).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout_msecs"), "{answer}");
    }
    assert_eq!(metric(d.addr, &cut("header_timeout")).await, 5);
    assert_eq!(metric(d.addr, &cut("body_timeout")).await, 5);
    assert!(metric(d.addr, &cut("replaced_idle")).await >= 300 - 192);
    // Idle connections are quiet; none was cut for a timeout it did not hit.
    assert_eq!(metric(d.addr, &cut("idle_timeout")).await, 0);
    drop(idle);
    let status = d.stop();
    assert!(status.success(), "{status:?}");
}

/// A connection that sends nothing — right after connecting, or between keep-alive
/// requests — is closed after `idle_timeout_msecs`, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n idle_timeout_msecs = 300\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n",
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let silent = TcpStream::connect(d.addr).await.unwrap();
    assert_eq!(until_closed(silent).await, "");

    let mut kept = TcpStream::connect(d.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(metric(d.addr, &cut("idle_timeout")).await, 2);
}

/// `max_connections_per_peer`: when every connection from an address is busy, a further
/// one from it is refused (and counted), while other addresses are still served.
#[tokio::test(flavor = "multi_thread")]
async fn per_peer_cap_refuses_when_all_are_busy() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n max_connections_per_peer = 3\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n",
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    // Three requests from 127.0.0.1 in their bodies: busy.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        c.write_all(b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(c);
    }
    // All three handlers are reading (each is charged 1 KiB).
    let mut in_flight = 0;
    for _ in 0..5000 {
        in_flight = metric(d.addr, "mailpush_ingest_body_bytes_in_flight").await;
        if in_flight == 3 * 1024 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(in_flight, 3 * 1024);
    let refused = TcpStream::connect(d.addr).await.unwrap();
    assert_eq!(until_closed(refused).await, "");
    assert_eq!(metric(d.addr, &cut("max_connections_per_peer")).await, 1);
    drop(busy);
}

/// Bodies are charged by the bytes that arrive: 64 unfinished chunked requests hold
/// 1 KiB each, not `max_body` each, so they all fit a 1 MiB budget and all succeed; a
/// Content-Length above `max_body` is refused before any of it is read.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_charged_by_what_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n max_body = 1M\n max_inflight = 1M\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n",
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let mut clients = Vec::new();
    for i in 0..64 {
        let mut c = TcpStream::connect(d.addr).await.unwrap();
        let line = txn_line("a@example.com", &format!("chunked-{i}"));
        let head = format!(
            "POST /v1/transactions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
            line.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        clients.push(c);
    }
    // Every handler has read its first chunk: 64 KiB charged, all at once.
    let mut in_flight = 0;
    for _ in 0..5000 {
        in_flight = metric(d.addr, "mailpush_ingest_body_bytes_in_flight").await;
        if in_flight == 64 * 1024 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(in_flight, 64 * 1024);
    for c in &mut clients {
        c.write_all(b"0\r\n\r\n").await.unwrap();
    }
    for c in clients {
        let answer = until_closed(c).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    }

    let mut c = TcpStream::connect(d.addr).await.unwrap();
    c.write_all(b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(c).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
