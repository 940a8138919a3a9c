//! WebSocket plumbing shared by the streaming clients: URL building, a bounded handshake with
//! vendor auth headers, and mapping tungstenite failures onto [`ProviderError`].

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::ProviderError;

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest server message we accept. Vendor audio chunks are tens of KB; anything near this is
/// a broken peer, and the bound keeps one bad frame from eating memory.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How much of an HTTP error body we keep for the error message.
pub(crate) const MAX_ERROR_BODY: usize = 2048;

/// `{base}{path}` as a WebSocket URL. Accepts `http(s)://` roots too, because bot configs and
/// vendor docs mix the two spellings for the same API root.
pub(crate) fn ws_url(provider: &'static str, base: &str, path: &str) -> Result<Url, ProviderError> {
    let joined = format!("{}{}", base.trim_end_matches('/'), path);
    let mut url = Url::parse(&joined)
        .map_err(|e| ProviderError::Connect { provider, detail: format!("bad base_url {base:?}: {e}") })?;
    let scheme = match url.scheme() {
        "http" => Some("ws"),
        "https" => Some("wss"),
        "ws" | "wss" => None,
        other => {
            return Err(ProviderError::Connect { provider, detail: format!("unsupported URL scheme {other:?}") });
        }
    };
    if let Some(scheme) = scheme {
        // Only fails for cannot-be-a-base URLs, which `Url::parse` of an http URL never yields.
        let _ = url.set_scheme(scheme);
    }
    Ok(url)
}

/// Open a WebSocket with the given extra headers, bounded by `timeout`.
pub(crate) async fn connect(
    provider: &'static str,
    url: &Url,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<WsStream, ProviderError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ProviderError::Connect { provider, detail: format!("bad request: {e}") })?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| ProviderError::Connect { provider, detail: format!("invalid {name} header value") })?;
        request.headers_mut().insert(HeaderName::from_static(name), value);
    }
    // tungstenite zero-fills its whole read buffer on every socket read; the 128 KiB default
    // was ~30 % of the worker's CPU at 100 calls. Provider messages are small (TTS chunks are
    // a few KiB), so 16 KiB keeps reads cheap without extra syscalls.
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).read_buffer_size(16 * 1024);
    let handshake = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(handshake_error(provider, e)),
        Err(_) => Err(ProviderError::Timeout { provider, what: format!("connecting to {}", redacted(url)) }),
    }
}

/// Scheme, host and path only: query strings can carry keys on some vendors.
fn redacted(url: &Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or(""), url.path())
}

fn handshake_error(provider: &'static str, e: tungstenite::Error) -> ProviderError {
    match e {
        tungstenite::Error::Http(response) => {
            let mut body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            // Deepgram explains handshake rejections in a header rather than the body.
            if let Some(reason) = response.headers().get("dg-error").and_then(|v| v.to_str().ok()) {
                body = if body.is_empty() { reason.to_string() } else { format!("{reason}: {body}") };
            }
            ProviderError::Status { provider, status: response.status().as_u16(), body: truncate(body, MAX_ERROR_BODY) }
        }
        other => ProviderError::Connect { provider, detail: other.to_string() },
    }
}

/// Cut `s` to at most `max` bytes on a char boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// "1011 NET-0001" style description of a close frame.
pub(crate) fn close_detail(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => u16::from(f.code).to_string(),
        Some(f) => format!("{} {}", u16::from(f.code), f.reason.as_str()),
        None => "closed without a close frame".to_string(),
    }
}

/// An unexpected close: a normal/going-away code is just "closed", anything else is the
/// server telling us something went wrong.
pub(crate) fn unexpected_close(provider: &'static str, frame: Option<&CloseFrame>) -> ProviderError {
    let detail = close_detail(frame);
    match frame.map(|f| f.code) {
        Some(CloseCode::Normal | CloseCode::Away) | None => ProviderError::Closed { provider, detail },
        Some(_) => ProviderError::Remote { provider, detail },
    }
}

/// A read/write failure on an open socket.
pub(crate) fn socket_error(provider: &'static str, e: tungstenite::Error) -> ProviderError {
    match e {
        tungstenite::Error::Capacity(c) => ProviderError::Protocol { provider, detail: c.to_string() },
        other => ProviderError::Closed { provider, detail: other.to_string() },
    }
}

/// Send one JSON text frame.
pub(crate) async fn send_json(
    provider: &'static str,
    ws: &mut WsStream,
    value: &serde_json::Value,
) -> Result<(), ProviderError> {
    use futures_util::SinkExt;
    ws.send(Message::text(value.to_string())).await.map_err(|e| socket_error(provider, e))
}

/// Best-effort polite close; errors are irrelevant because we are leaving anyway.
pub(crate) async fn close_quietly(ws: &mut WsStream) {
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}

/// Decode one base64 chunk of s16le PCM. Vendors may split a chunk between the two bytes of
/// a sample, so an odd trailing byte is carried into the next chunk of the same stream.
pub(crate) fn pcm_from_base64(carry: &mut Option<u8>, b64: &str) -> Result<Vec<i16>, base64::DecodeError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
    Ok(pcm_from_le_bytes(carry, &bytes))
}

/// s16le bytes to samples, with the same odd-byte carry as [`pcm_from_base64`] (vendors that
/// send binary frames split them just as freely).
pub(crate) fn pcm_from_le_bytes(carry: &mut Option<u8>, bytes: &[u8]) -> Vec<i16> {
    let mut samples = Vec::with_capacity(bytes.len() / 2 + 1);
    let mut rest = bytes;
    if let (Some(low), Some((&high, tail))) = (*carry, rest.split_first()) {
        samples.push(i16::from_le_bytes([low, high]));
        *carry = None;
        rest = tail;
    }
    let mut pairs = rest.chunks_exact(2);
    samples.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
    if let [odd] = pairs.remainder() {
        *carry = Some(*odd);
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_carries_odd_bytes() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut carry = None;
        assert_eq!(pcm_from_base64(&mut carry, &b64(&[1, 0, 0xff])).unwrap(), vec![1]);
        assert_eq!(carry, Some(0xff));
        assert_eq!(pcm_from_base64(&mut carry, &b64(&[0x7f, 2, 0])).unwrap(), vec![0x7fff, 2]);
        assert_eq!(carry, None);
        assert!(pcm_from_base64(&mut carry, "!!").is_err());
    }

    #[test]
    fn url_scheme_mapping() {
        let u = ws_url("x", "https://api.example.com/", "/v1/listen").unwrap();
        assert_eq!(u.as_str(), "wss://api.example.com/v1/listen");
        let u = ws_url("x", "ws://127.0.0.1:9", "/a").unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:9/a");
        assert!(ws_url("x", "ftp://h", "/a").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
