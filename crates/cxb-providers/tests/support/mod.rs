//! Loopback vendor doubles shared by the integration tests: a WebSocket server that records the
//! handshake request, and small helpers with timeouts so a broken client fails fast, not hangs.
// Each test binary uses a different subset; the handshake callback type is tungstenite's.
#![allow(dead_code, clippy::result_large_err)]

pub mod llm;

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const WAIT: Duration = Duration::from_secs(5);

pub type ServerWs = WebSocketStream<TcpStream>;

/// One accepted WebSocket and the request that opened it.
pub struct Accepted {
    /// Path and query, e.g. `/v1/listen?model=nova-3&…`.
    pub uri: String,
    pub headers: HeaderMap,
    pub ws: ServerWs,
}

impl Accepted {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// Decoded query pairs in order.
    pub fn query(&self) -> Vec<(String, String)> {
        let query = self.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    pub fn query_value(&self, key: &str) -> Option<String> {
        self.query().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A WebSocket server on 127.0.0.1 that accepts every connection and hands it to the test.
pub async fn ws_server() -> (String, mpsc::Receiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut seen = None;
            let callback = |req: &Request, resp: Response| {
                seen = Some((req.uri().to_string(), req.headers().clone()));
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                continue;
            };
            let (uri, headers) = seen.unwrap();
            if tx.send(Accepted { uri, headers, ws }).await.is_err() {
                break;
            }
        }
    });
    (base, rx)
}

/// A server that rejects every WebSocket handshake with `status` and a JSON body.
pub async fn ws_server_rejecting(status: u16, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let callback = move |_: &Request, _: Response| {
                let mut resp = ErrorResponse::new(Some(body.to_string()));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                Err(resp)
            };
            let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
        }
    });
    base
}

/// A TCP server that accepts and then says nothing (handshake never completes).
pub async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    base
}

pub async fn accept(rx: &mut mpsc::Receiver<Accepted>) -> Accepted {
    within(rx.recv()).await.expect("server accept channel closed")
}

/// Await with the test-wide bound.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut).await.expect("timed out")
}

/// Next event from a client's event channel.
pub async fn event<T>(rx: &mut mpsc::Receiver<T>) -> T {
    within(rx.recv()).await.expect("event channel closed")
}

/// Next data message (text or binary) the client sent, skipping pings/pongs.
pub async fn next_frame(ws: &mut ServerWs) -> Message {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(msg)) => return msg,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Next text message the client sent, parsed as JSON.
pub async fn next_json(ws: &mut ServerWs) -> Value {
    match next_frame(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("client sent invalid JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn send_json(ws: &mut ServerWs, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

pub async fn close_with(ws: &mut ServerWs, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// Wait until the client closes the socket (close frame, EOF or reset).
pub async fn expect_closed(ws: &mut ServerWs) {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => continue,
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}
