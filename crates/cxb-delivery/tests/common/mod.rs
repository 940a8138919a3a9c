//! Loopback HTTP receiver with scripted responses, for outbox tests and benches.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Resp {
    pub fn status(status: u16) -> Resp {
        Resp { status, headers: Vec::new(), body: String::new(), delay: Duration::ZERO }
    }
    pub fn body(mut self, b: &str) -> Resp {
        self.body = b.to_owned();
        self
    }
    pub fn header(mut self, k: &'static str, v: &str) -> Resp {
        self.headers.push((k, v.to_owned()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Resp {
        self.delay = d;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Resp>>,
    default: Mutex<Option<Resp>>,
    hits: Mutex<Vec<Hit>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Server {
    pub async fn start() -> Server {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Responses returned in order before falling back to the default (200).
    pub fn script(&self, rs: impl IntoIterator<Item = Resp>) {
        self.inner.script.lock().unwrap().extend(rs);
    }

    pub fn set_default(&self, r: Resp) {
        *self.inner.default.lock().unwrap() = Some(r);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    pub fn hit_count(&self) -> usize {
        self.inner.hits.lock().unwrap().len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(State(s): State<Arc<Inner>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    // Decrement on drop: a client timeout cancels this future mid-sleep.
    struct InFlight(Arc<Inner>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(s.clone());
    s.hits.lock().unwrap().push(Hit { at: Instant::now(), path: uri.path().to_owned(), headers, body: body.to_vec() });
    let r = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| s.default.lock().unwrap().clone())
        .unwrap_or_else(|| Resp::status(200).body(r#"{"status":"ok"}"#));
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let mut resp = (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
    for (k, v) in r.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

/// Polls `cond` every 10 ms until true or `timeout`.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
