//! A bounded load test on loopback through a real socket: concurrent clients, some
//! sending malformed bodies and some hanging up mid-stream. Every well-formed request
//! must complete, every malformed one get a 4xx, and the server must stay healthy.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use whale_server::ServeOptions;

const REQUESTS: usize = 96;
const CLIENTS: usize = 16;

/// Sends one HTTP/1.1 request with `Connection: close`; returns the status and the raw
/// rest of the response (body possibly chunked). With `hang_up_after`, returns as soon as
/// that many SSE events arrived, dropping the connection.
async fn request(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    hang_up_after: Option<usize>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(k) = hang_up_after {
            if String::from_utf8_lossy(&buf).matches("data: ").count() >= k {
                break; // dropping `s` closes the connection mid-stream
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_load_with_malformed_requests_and_disconnects() {
    let dir = tiny_model(false);
    let server = start(
        dir.path(),
        ServeOptions {
            ctx: Some(2048),
            max_seqs: 4,
            ..Default::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REQUESTS {
                    return failures;
                }
                let p = prompt(20 + i % 90, (i % 7) as u32); // shared prefixes across requests
                match i % 10 {
                    0 => {
                        let (status, text) = request(addr, "/v1/completions", b"{\"prompt\": [1, 2", None).await;
                        if status != 400 {
                            failures.push(format!("malformed {i}: {status} {text}"));
                        }
                    }
                    5 => {
                        let body = json!({"prompt": p, "max_tokens": 1000, "stream": true}).to_string();
                        let (status, _) = request(addr, "/v1/completions", body.as_bytes(), Some(3)).await;
                        if status != 200 {
                            failures.push(format!("disconnecting {i}: {status}"));
                        }
                    }
                    k => {
                        let stream = k % 2 == 0;
                        let body = json!({"prompt": p, "max_tokens": 8 + i % 24, "temperature": 0.7, "seed": i,
                                          "stream": stream});
                        let (status, text) = request(addr, "/v1/completions", body.to_string().as_bytes(), None).await;
                        let complete = if stream {
                            text.contains("data: [DONE]") && text.contains("\"finish_reason\":\"length\"")
                        } else {
                            text.contains("\"finish_reason\":\"length\"")
                        };
                        if status != 200 || !complete {
                            failures.push(format!("request {i}: {status} {text}"));
                        }
                    }
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(
            tokio::time::timeout(Duration::from_secs(300), w)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let health = call(&server.app(), "GET", "/health", None, None).await;
    assert_eq!(health.status, axum::http::StatusCode::OK);
    // Every slot is free again once the hung-up streams are noticed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = String::from_utf8(
            call(&server.app(), "GET", "/metrics", None, None)
                .await
                .body,
        )
        .unwrap();
        if m.contains("whale_running_sequences 0") && m.contains("whale_queue_depth 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sequences still running:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
