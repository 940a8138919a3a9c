//! The call's link to the caller: what carries audio and control between the call driver and
//! the far end. The driver (`call.rs`) is written once against [`CallLink`]; a WebSocket
//! telephony protocol ([`WsLink`]) and a LiveKit room (`livekit::RoomLink`) each implement it.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use cxb_transports::{CallMeta, Inbound, OutFrame, ProtocolError, Transport};
use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tracing::{debug, info, warn};

/// How long a single outbound frame may take to write before the caller counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long we wait for the peer to finish a close / hang-up exchange.
const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// Something the link delivers to the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// A decoded message from the caller's side (audio, DTMF, mark echo, hang-up, ...).
    Inbound(Inbound),
    /// A frame the protocol could not accept; the call goes on.
    Protocol(ProtocolError),
    /// The caller is gone (closed, left the room, connection lost).
    Gone { why: String },
    /// The link broke in a way that is our side's problem (oversized frame, room media error):
    /// the call ends as `error` with this event recorded.
    Failed { error: String, event: Option<(&'static str, serde_json::Value)> },
    /// A human agent joined (Agent Desk handoff).
    AgentJoined { identity: String },
    /// A human agent left.
    AgentLeft { identity: String },
    /// Audio spoken by a human agent (recorded on the bot's channel after a handoff).
    AgentAudio(Vec<i16>),
}

/// How a transfer request goes.
pub enum TransferStart {
    /// Done (or refused) on the spot, e.g. a frame was queued.
    Done(Result<(), TransferError>),
    /// Performed by this future (a server API call); the driver awaits it off the call task.
    Pending(BoxFuture<'static, Result<(), TransferError>>),
}

/// Why a transfer did not happen. The text goes to the LLM and into the `transfer_failed` event.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The transport's protocol has no transfer, or refused this one.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("method {method:?} cannot be used on a {transport} call")]
    Method { method: String, transport: &'static str },
    #[error("the caller's SIP participant is not known")]
    NoSipParticipant,
    #[error("the caller is not on a SIP call")]
    NotSip,
    #[error(transparent)]
    Destination(#[from] cxb_livekit::TransferDestinationError),
    /// LiveKit refused or failed the SIP REFER; `sip_status` is the phone network's final answer.
    #[error("{}{source}", .sip_status.map(|c| format!("SIP {c}: ")).unwrap_or_default())]
    Refer { sip_status: Option<u16>, source: cxb_livekit::ServerApiError },
    #[error(transparent)]
    Handoff(#[from] crate::call::HandoffError),
}

/// The call driver's view of the far end. Output methods queue; [`CallLink::flush`] writes.
pub trait CallLink: Send {
    /// Transport name as it appears in results and metrics (`websocket`, `livekit_inbound`, ...).
    fn name(&self) -> &'static str;
    /// Which transfer methods apply (contract §4.4 `_TRANSPORT_METHODS` key).
    fn transfer_family(&self) -> &'static str;
    fn meta(&self) -> &CallMeta;
    /// The next event from the caller's side. Must be cancel-safe (used in `select!`).
    fn recv(&mut self) -> impl Future<Output = LinkEvent> + Send;
    /// Queue one 20 ms frame of bot audio.
    fn audio(&mut self, frame: &[i16]);
    /// Drop bot audio queued towards the caller (barge-in).
    fn clear(&mut self);
    /// An utterance's last frame was queued; returns the playback mark placed, if any.
    fn utterance_done(&mut self) -> Option<String>;
    /// The bot hangs up.
    fn hang_up(&mut self);
    /// Transfer the caller. `kind` is the target's type (`sip_uri`, `phone_number`, ...).
    fn transfer(&mut self, destination: &str, method: &str, kind: &str, reason: &str) -> TransferStart;
    /// Write what was queued. False when the caller is gone.
    fn flush(&mut self) -> impl Future<Output = bool> + Send;
    /// The call is over: finish the exchange with the far end and release the link.
    fn finish(&mut self, bot_hung_up: bool) -> impl Future<Output = ()> + Send;
    /// The caller's identity on the link, where it has one (a LiveKit participant identity).
    fn caller_identity(&self) -> Option<&str> {
        None
    }
    /// Human agents can take over this call in place (LiveKit rooms).
    fn supports_handoff(&self) -> bool {
        false
    }
}

type WsTx = SplitSink<WebSocket, Message>;
type WsRx = SplitStream<WebSocket>;

/// A WebSocket split into halves, with bounded writes and a clean close.
pub struct WsIo {
    tx: WsTx,
    pub(crate) rx: WsRx,
    closed: bool,
}

impl WsIo {
    pub fn new(socket: WebSocket) -> Self {
        let (tx, rx) = socket.split();
        Self { tx, rx, closed: false }
    }

    /// Write frames in order with one flush at the end (bot audio goes out in small bursts).
    /// Returns false when the caller is gone.
    pub async fn send_all(&mut self, frames: impl IntoIterator<Item = OutFrame>) -> bool {
        let mut pending = false;
        for frame in frames {
            if self.closed {
                return false;
            }
            let msg = match frame {
                OutFrame::Text(t) => Message::Text(t.into()),
                OutFrame::Binary(b) => Message::Binary(b.into()),
                OutFrame::Close { code, reason } => {
                    if pending && !self.flush().await {
                        return false;
                    }
                    pending = false;
                    self.close(code, &reason).await;
                    continue;
                }
                OutFrame::Http(req) => {
                    spawn_http(req);
                    continue;
                }
            };
            match tokio::time::timeout(SEND_TIMEOUT, self.tx.feed(msg)).await {
                Ok(Ok(())) => pending = true,
                Ok(Err(e)) => {
                    debug!(error = %e, "send failed; caller gone");
                    self.closed = true;
                    return false;
                }
                Err(_) => {
                    warn!("send blocked for {SEND_TIMEOUT:?}; treating the caller as gone");
                    self.closed = true;
                    return false;
                }
            }
        }
        !pending || self.flush().await
    }

    async fn flush(&mut self) -> bool {
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.flush()).await {
            Ok(Ok(())) => true,
            _ => {
                self.closed = true;
                false
            }
        }
    }

    pub async fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Close reasons are limited to 123 bytes by RFC 6455.
        let mut reason: String = reason.chars().take(100).collect();
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.tx.send(frame)).await;
        // Complete the closing handshake: read (and discard) until the peer's close, so the
        // socket is not dropped with unread data (which makes the kernel send a reset and the
        // peer can lose our last frames).
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = self.rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        let _ = self.tx.close().await;
    }

    /// After the bot's hang-up frames: the dialler answers with `hangup-call` and closes.
    /// Keep reading (bounded) so our frames are not lost to a reset.
    async fn linger_for_peer_hangup(&mut self) {
        if self.closed {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = self.rx.next().await {
                match m {
                    Message::Close(_) => {
                        self.closed = true;
                        break;
                    }
                    Message::Text(t) if t.contains("hangup-call") => break,
                    _ => {}
                }
            }
        })
        .await;
    }
}

/// Is this WebSocket error an oversized frame (our limit) rather than a lost connection?
pub fn is_frame_too_large(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}

/// A telephony WebSocket protocol: the socket plus the protocol's [`Transport`] adapter.
pub struct WsLink<T: Transport> {
    ws: WsIo,
    transport: T,
    out: Vec<OutFrame>,
    max_frame_bytes: usize,
}

impl<T: Transport> WsLink<T> {
    pub fn new(ws: WsIo, transport: T, max_frame_bytes: usize) -> Self {
        Self { ws, transport, out: Vec::with_capacity(4), max_frame_bytes }
    }

    fn decode(&mut self, msg: Option<Result<Message, axum::Error>>) -> Option<LinkEvent> {
        Some(match msg {
            None | Some(Ok(Message::Close(_))) => LinkEvent::Gone { why: "caller closed the connection".into() },
            Some(Err(e)) if is_frame_too_large(&e) => {
                warn!(error = %e, limit = self.max_frame_bytes, "oversized frame; ending the call");
                LinkEvent::Failed {
                    error: e.to_string(),
                    event: Some((
                        "protocol_error",
                        serde_json::json!({"error": "frame too large", "limit_bytes": self.max_frame_bytes}),
                    )),
                }
            }
            Some(Err(e)) => LinkEvent::Gone { why: format!("connection lost: {e}") },
            Some(Ok(Message::Text(t))) => match self.transport.on_text(&t) {
                Ok(inb) => LinkEvent::Inbound(inb),
                Err(e) => LinkEvent::Protocol(e),
            },
            Some(Ok(Message::Binary(b))) => match self.transport.on_binary(&b) {
                Ok(inb) => LinkEvent::Inbound(inb),
                Err(e) => LinkEvent::Protocol(e),
            },
            Some(Ok(_)) => return None,
        })
    }
}

impl<T: Transport + Send> CallLink for WsLink<T> {
    fn name(&self) -> &'static str {
        self.transport.name()
    }

    fn transfer_family(&self) -> &'static str {
        if self.transport.supports_transfer() {
            "websocket"
        } else {
            self.transport.name()
        }
    }

    fn meta(&self) -> &CallMeta {
        self.transport.meta()
    }

    async fn recv(&mut self) -> LinkEvent {
        loop {
            // `StreamExt::next` on the split stream is cancel-safe.
            let msg = self.ws.rx.next().await;
            if let Some(ev) = self.decode(msg) {
                return ev;
            }
        }
    }

    fn audio(&mut self, frame: &[i16]) {
        self.transport.audio(frame, &mut self.out);
    }

    fn clear(&mut self) {
        self.transport.clear(&mut self.out);
    }

    fn utterance_done(&mut self) -> Option<String> {
        self.transport.utterance_done(&mut self.out)
    }

    fn hang_up(&mut self) {
        self.transport.hang_up(&mut self.out);
    }

    fn transfer(&mut self, destination: &str, _method: &str, _kind: &str, reason: &str) -> TransferStart {
        // The dialler does not acknowledge reverse-call-transfer: sent is done.
        TransferStart::Done(self.transport.transfer(destination, reason, &mut self.out).map_err(TransferError::from))
    }

    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let frames: Vec<OutFrame> = self.out.drain(..).collect();
        self.ws.send_all(frames).await
    }

    async fn finish(&mut self, bot_hung_up: bool) {
        if bot_hung_up {
            self.ws.linger_for_peer_hangup().await;
        }
        self.ws.close(1000, "call ended").await;
    }
}

/// Perform a transport's out-of-band HTTP request (REST hang-up, ...) without blocking the call.
fn spawn_http(req: cxb_transports::HttpRequest) {
    crate::call::spawn_in_call(async move {
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = HTTP.get_or_init(reqwest::Client::new);
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut r = http.request(method, &req.url).timeout(Duration::from_secs(5));
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        if let Some(b) = req.body {
            r = r.body(b);
        }
        match r.send().await {
            Ok(resp) if resp.status().is_success() => {
                info!(url = %req.url, status = resp.status().as_u16(), "transport request done")
            }
            Ok(resp) => warn!(url = %req.url, status = resp.status().as_u16(), "transport request refused"),
            Err(e) => warn!(url = %req.url, error = %e, "transport request failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text goes to the LLM and into `transfer_failed`; a SIP status leads it.
    #[test]
    fn transfer_errors_read_as_before() {
        let refused = TransferError::Refer {
            sip_status: Some(486),
            source: cxb_livekit::ServerApiError::Sip {
                status_code: 486,
                status: "Busy Here".into(),
                twirp_code: "unavailable".into(),
            },
        };
        assert_eq!(refused.to_string(), "SIP 486: SIP status 486 Busy Here (twirp code \"unavailable\")");
        let failed = TransferError::Refer {
            sip_status: None,
            source: cxb_livekit::ServerApiError::TransferFailed { reason: "no answer".into() },
        };
        assert_eq!(failed.to_string(), "SIP transfer failed: no answer");
        let method = TransferError::Method { method: "dialler".into(), transport: "livekit_inbound" };
        assert_eq!(method.to_string(), "method \"dialler\" cannot be used on a livekit_inbound call");
        assert_eq!(
            TransferError::from(ProtocolError::Unsupported("transfer")).to_string(),
            ProtocolError::Unsupported("transfer").to_string()
        );
    }
}
