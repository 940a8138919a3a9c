//! The connection task shared by the streaming STT clients whose wire differs only in message
//! shapes (Deepgram v1, Soniox, Sarvam): one task owns the socket, forwards caller audio, sends the vendor's
//! keepalive while no audio flows, and turns server text frames into [`SttEvent`]s. A
//! [`Dialect`] supplies the vendor's frames and parsing; the loop, its bounds and its terminal
//! events are the same for every vendor.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::stt::{SttCommand, SttEvent, SttHandle};
use crate::ws::{self, WsStream};
use crate::ProviderError;

const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;

/// Timers of a session. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Send the dialect's keepalive after this long without audio.
    pub keepalive: Duration,
    /// How long to wait for the server's last results and close after end-of-stream.
    pub close_wait: Duration,
}

/// What one server text frame meant.
#[doc(hidden)]
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub events: Vec<SttEvent>,
    /// The server said the stream is over (its last message); the session ends cleanly.
    pub finished: bool,
}

/// A vendor's frames on the shared session loop.
pub(crate) trait Dialect: Send + 'static {
    /// Vendor name for errors and logs.
    const PROVIDER: &'static str;
    /// The frame carrying one chunk of caller audio (LINEAR16 little-endian, never empty).
    fn audio(&mut self, bytes: Vec<u8>) -> Message;
    /// What the handle's `finalize()` sends, if this vendor/config wants anything sent.
    fn finalize(&mut self) -> Option<Message>;
    /// Sent after [`Timing::keepalive`] without audio.
    fn keepalive(&mut self) -> Message;
    /// Sent on `close()`, after which the server's last results are awaited (bounded); `None`
    /// when nothing is left to wait for, and the socket is closed at once.
    fn end_of_stream(&mut self) -> Option<Message>;
    /// Events for one server text frame.
    fn on_text(&mut self, text: &str) -> Parsed;
    /// Whatever is still buffered when the stream ends (a transcript never closed by an
    /// end-of-utterance marker, for instance).
    fn on_end(&mut self) -> Vec<SttEvent>;
}

/// Spawn the session task on an open (and, where the vendor wants one, configured) socket.
pub(crate) fn spawn<D: Dialect>(socket: WsStream, dialect: D, timing: Timing) -> (SttHandle, mpsc::Receiver<SttEvent>) {
    let provider = D::PROVIDER;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(Session { ws: socket, dialect, cmd_rx, ev_tx, timing }.run());
    (SttHandle { tx: cmd_tx, provider }, ev_rx)
}

/// Why the loop stopped.
enum End {
    Closed,
    Failed(ProviderError),
    ReceiverGone,
}

struct Session<D> {
    ws: WsStream,
    dialect: D,
    cmd_rx: mpsc::Receiver<SttCommand>,
    ev_tx: mpsc::Sender<SttEvent>,
    timing: Timing,
}

impl<D: Dialect> Session<D> {
    async fn run(mut self) {
        let end = self.pump().await;
        if matches!(end, End::ReceiverGone) {
            return;
        }
        // A transcript still buffered is real speech: deliver it before the terminal event.
        for event in self.dialect.on_end() {
            if self.ev_tx.send(event).await.is_err() {
                return;
            }
        }
        let terminal = match end {
            End::Closed => SttEvent::Closed,
            End::Failed(e) => {
                tracing::warn!(error = %e, "{} stream failed", D::PROVIDER);
                SttEvent::Error(e)
            }
            End::ReceiverGone => return,
        };
        let _ = self.ev_tx.send(terminal).await;
    }

    async fn pump(&mut self) -> End {
        let mut keepalive_at = Instant::now() + self.timing.keepalive;
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let frame = match cmd {
                        Some(SttCommand::Audio(bytes)) if bytes.is_empty() => None,
                        Some(SttCommand::Audio(bytes)) => {
                            keepalive_at = Instant::now() + self.timing.keepalive;
                            Some(self.dialect.audio(bytes))
                        }
                        Some(SttCommand::Finalize) => self.dialect.finalize(),
                        // Every handle dropped counts as a close: nobody can send audio any more.
                        Some(SttCommand::Close) | None => return self.close_stream().await,
                    };
                    if let Some(frame) = frame {
                        if let Err(e) = self.send(frame).await {
                            return End::Failed(e);
                        }
                    }
                }
                msg = self.ws.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(keepalive_at) => {
                    keepalive_at = Instant::now() + self.timing.keepalive;
                    let frame = self.dialect.keepalive();
                    if let Err(e) = self.send(frame).await {
                        return End::Failed(e);
                    }
                }
            }
        }
    }

    async fn send(&mut self, frame: Message) -> Result<(), ProviderError> {
        let provider = D::PROVIDER;
        self.ws.send(frame).await.map_err(|e| ws::socket_error(provider, e))
    }

    /// Forward one server frame's events; `Some` ends the session.
    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Option<End> {
        let provider = D::PROVIDER;
        let parsed = match msg {
            None => return Some(End::Failed(ProviderError::Closed { provider, detail: "socket ended".into() })),
            Some(Err(e)) => return Some(End::Failed(ws::socket_error(provider, e))),
            Some(Ok(Message::Close(frame))) => {
                return Some(End::Failed(ws::unexpected_close(provider, frame.as_ref())))
            }
            Some(Ok(Message::Text(text))) => self.dialect.on_text(text.as_str()),
            Some(Ok(_)) => return None,
        };
        self.deliver(parsed).await
    }

    /// Send a frame's events on; an error event or the server's last message ends the session.
    async fn deliver(&mut self, parsed: Parsed) -> Option<End> {
        for event in parsed.events {
            if let SttEvent::Error(e) = event {
                return Some(End::Failed(e));
            }
            if self.ev_tx.send(event).await.is_err() {
                return Some(End::ReceiverGone);
            }
        }
        parsed.finished.then_some(End::Closed)
    }

    /// End-of-stream, then forward the server's last results until it closes (bounded).
    async fn close_stream(&mut self) -> End {
        let Some(frame) = self.dialect.end_of_stream() else {
            ws::close_quietly(&mut self.ws).await;
            return End::Closed;
        };
        if let Err(e) = self.send(frame).await {
            tracing::debug!(error = %e, "{} socket already gone at close", D::PROVIDER);
            return End::Closed;
        }
        let deadline = Instant::now() + self.timing.close_wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    tracing::debug!("{} did not end the stream in time", D::PROVIDER);
                    break;
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    let parsed = self.dialect.on_text(text.as_str());
                    match self.deliver(parsed).await {
                        None => {}
                        Some(End::Closed) => break,
                        Some(other) => return other,
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        ws::close_quietly(&mut self.ws).await;
        End::Closed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::Future;

    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// Open a stream with `connect(base_url)` against a loopback server, send nothing, and
    /// return the first `n` text frames the client sends (its configuration, keepalives, ...).
    pub(crate) async fn texts_while_idle<F, Fut>(n: usize, connect: F) -> Vec<String>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut texts = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    texts.push(t.to_string());
                    if texts.len() == n {
                        break;
                    }
                }
            }
            texts
        });
        let (_handle, _events) = connect(base).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap()
    }
}
