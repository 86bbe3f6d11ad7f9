//! Connections: what the accept loop owes every connection. A connection that
//! never sends a request is closed after the first-request deadline (counted from accept, not
//! from its first byte), an idle keep-alive connection after the idle deadline, one address
//! holds at most `max_connections_per_address` at once, and an oversized body gets its JSON
//! answer instead of a reset.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes the connection (end of file or reset), for at most `limit`.
/// Returns how long that took, or `None` if the connection was still open at `limit`.
async fn wait_for_close(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// One HTTP/1.1 request on `conn`, keeping the connection; returns the status line.
async fn get_on(conn: &mut TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // /healthz answers with a small, length-delimited body: read until the body is in.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap();
                if body.len() >= len {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&got).lines().next().unwrap().to_owned()
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_request_deadline() {
    let app = spawn_app_with(|c| c.header_read_timeout_secs = 1).await;
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    for conn in &mut silent {
        let took = wait_for_close(conn, Duration::from_secs(4)).await;
        let took = took.expect("a connection that never sent a byte was held open");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    // Closed at the deadline, not on arrival: a request sent at once is still served.
    let mut prompt = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(get_on(&mut prompt, "/healthz").await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn an_http2_preface_alone_is_closed_at_the_first_request_deadline() {
    let app = spawn_app_with(|c| c.header_read_timeout_secs = 1).await;
    // The preface alone, and the preface with an empty SETTINGS frame (a complete HTTP/2
    // handshake) and then nothing.
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    for opening in [H2_PREFACE.to_vec(), [H2_PREFACE, settings].concat()] {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(&opening).await.unwrap();
        let took = wait_for_close(&mut conn, Duration::from_secs(4)).await;
        let took = took.expect("an HTTP/2 connection without a request was held open");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}

#[tokio::test]
async fn a_new_connection_beyond_the_per_address_cap_is_closed_at_once() {
    let app = spawn_app_with(|c| {
        c.max_connections_per_address = 4;
        c.header_read_timeout_secs = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth from the same address is closed on arrival, well before any deadline.
    let mut fifth = TcpStream::connect(app.addr).await.unwrap();
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let took = wait_for_close(&mut fifth, Duration::from_secs(1)).await;
    assert!(took.is_some(), "the fifth connection from one address was served");

    // Another address is not held back by the first one's cap (127.0.0.2 is loopback too).
    #[cfg(target_os = "linux")]
    {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut other = socket.connect(app.addr).await.unwrap();
        assert_eq!(get_on(&mut other, "/healthz").await, "HTTP/1.1 200 OK");
    }

    // Once the silent four reach their deadline they are closed, and the address is served again.
    for conn in &mut held {
        assert!(wait_for_close(conn, Duration::from_secs(5)).await.is_some(), "a silent connection was held open");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert_eq!(count("tessera_connections_closed_total{reason=\"per_address_limit\"}"), 1.0);
    assert_eq!(count("tessera_connections_closed_total{reason=\"first_request_timeout\"}"), 4.0);
}

#[tokio::test]
async fn a_keep_alive_client_is_served_until_it_goes_idle() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout_secs = 1;
        c.idle_timeout_secs = 2;
    })
    .await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    // Requests spaced beyond the first-request deadline but within the idle deadline all go
    // through on the one connection.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(get_on(&mut conn, "/healthz").await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    assert_eq!(get_on(&mut conn, "/healthz").await, "HTTP/1.1 200 OK");
    assert!(started.elapsed() > Duration::from_secs(3));
    // Then, left idle, it is closed at the idle deadline.
    let took = wait_for_close(&mut conn, Duration::from_secs(5)).await;
    let took = took.expect("an idle keep-alive connection was held open");
    assert!(took > Duration::from_millis(1500) && took < Duration::from_secs(4), "{took:?}");

    // A pooling client (reqwest keeps its connection alive) sees nothing of it.
    for _ in 0..3 {
        assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test]
async fn a_slow_loris_on_a_kept_alive_connection_is_disconnected() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout_secs = 1;
        c.idle_timeout_secs = 30;
    })
    .await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(get_on(&mut conn, "/healthz").await, "HTTP/1.1 200 OK");
    // The next request's headers, a byte every 200 ms: the idle deadline is far, but the
    // headers are due within the header deadline of their first byte.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                r = conn.read(&mut buf) => return matches!(r, Ok(0) | Err(_)),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if conn.write_all(b"a").await.is_err() {
                        return true;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the connection was held open");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_oversized_body_gets_its_json_answer_not_a_reset() {
    let app = spawn_app().await;
    let body = vec![b'a'; 1024 * 1024];
    for round in 0..20 {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // A client without `Expect: 100-continue` sends the whole body before it reads, here
        // as a network delivers it, a piece at a time: the broker has answered (and, before
        // the fix, closed) long before the last piece.
        let sent = tokio::time::timeout(Duration::from_secs(10), async {
            for piece in body.chunks(64 * 1024) {
                conn.write_all(piece).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            std::io::Result::Ok(())
        })
        .await
        .unwrap();
        assert!(sent.is_ok(), "round {round}: sending the body failed: {sent:?}");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await.unwrap();
        assert!(read.is_ok(), "round {round}: reading the answer failed: {read:?}");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413 "), "round {round}: {text}");
        let (_, json) = text.split_once("\r\n\r\n").unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["error"], "invalid_request", "round {round}: {v}");
        assert!(v["error_description"].is_string(), "round {round}: {v}");
    }
}

#[tokio::test]
async fn a_graceful_shutdown_answers_the_request_in_flight() {
    let app = spawn_app().await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let form = b"grant_type=client_credentials";
    let head = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&form[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The request is in the handler, waiting for the rest of its body, when the stop comes.
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the broker stopped with a request in flight");
    conn.write_all(&form[5..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.unwrap().unwrap();
}

/// A socket from `ip` (any address of 127.0.0.0/8 reaches the broker on 127.0.0.1).
#[cfg(target_os = "linux")]
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Review round three, item 9: with `max_connections = 8`, eight silent sockets from one
/// address made `/healthz` from another fail for seconds. One address holds at most half the
/// listener whatever is configured, and the last slot is kept for health checks from
/// loopback, answered there and nowhere else.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_lowered_connection_limit_is_no_one_peers_to_fill() {
    let app = spawn_app_with(|c| {
        c.max_connections = 8;
        c.max_connections_per_address = 64;
        c.header_read_timeout_secs = 5;
    })
    .await;
    // Eight silent sockets from one address: four are held, the rest closed on arrival.
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..8 {
        let mut c = connect_from([127, 0, 0, 2], app.addr).await;
        if wait_for_close(&mut c, Duration::from_millis(150)).await.is_some() {
            closed += 1;
        } else {
            held.push(c);
        }
    }
    assert_eq!((held.len(), closed), (4, 4));
    let mut other = connect_from([127, 0, 0, 3], app.addr).await;
    assert_eq!(get_on(&mut other, "/healthz").await, "HTTP/1.1 200 OK");
    drop(other);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Three more addresses take the other general slots (7 of 8 in all).
    for ip in [[127, 0, 0, 4], [127, 0, 0, 5], [127, 0, 0, 6]] {
        let mut c = connect_from(ip, app.addr).await;
        if wait_for_close(&mut c, Duration::from_millis(150)).await.is_none() {
            held.push(c);
        }
    }
    assert_eq!(held.len(), 7);
    // The kept slot: a health check from loopback is answered...
    let mut health = connect_from([127, 0, 0, 9], app.addr).await;
    assert_eq!(get_on(&mut health, "/readyz").await, "HTTP/1.1 200 OK");
    // While it is held, the next is closed on arrival.
    let mut beyond = connect_from([127, 0, 0, 10], app.addr).await;
    let _ = beyond.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), beyond.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // ...and anything else on it is 503 in the pinned error shape, the connection closed.
    health.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), health.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"error\":\"temporarily_unavailable\""), "{text}");
}
