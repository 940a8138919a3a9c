//! Telephony transport protocols as sans-IO adapters. A transport turns its wire frames into
//! [`Inbound`] events and the driver's audio/clear/hang-up/transfer into wire frames; the socket
//! itself belongs to the worker. Adding a protocol means adding a module here and its route —
//! nothing in the engine or the driver changes.

pub mod dialler;
pub mod exotel;
pub mod g711;
pub mod media;
pub mod plivo;
pub mod resample;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

use serde_json::{Map, Value};

/// A frame to put on the wire — or, for providers whose hang-up is a REST call, a request
/// the driver performs (bounded, logged; its failure never blocks the call's end).
#[derive(Debug, Clone, PartialEq)]
pub enum OutFrame {
    Text(String),
    Binary(Vec<u8>),
    /// Close the socket with this code and reason.
    Close {
        code: u16,
        reason: String,
    },
    Http(HttpRequest),
}

/// An out-of-band HTTP request (Twilio/Telnyx/Plivo hang-up, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// What an inbound frame meant, once the call is running.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Caller audio as i16 samples at the call's sample rate.
    Audio(Vec<i16>),
    /// The caller hung up; `by` is the transport's own label when it sends one.
    Hangup {
        by: Option<String>,
    },
    Mark(String),
    Dtmf(String),
    /// A frame that needs no action (keep-alives, duplicate handshake events, ...).
    Ignored(&'static str),
}

/// Metadata extracted during the handshake. Serialisable: the crash journal keeps it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CallMeta {
    pub stream_id: String,
    pub caller_id: String,
    pub did: String,
    pub call_direction: String,
    pub sample_rate: u32,
    /// Forwarded to the config fetch and echoed in the result.
    pub connected_event: Map<String, Value>,
}

/// Handshake progress.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeStep {
    /// Need more frames.
    Continue,
    /// Metadata is complete (config can be fetched) but the call is not answered yet.
    MetaReady,
    /// The call is answered: start the conversation. Audio that arrived with the answering
    /// frame (a first `media` standing in for `answer`) is returned so it is not lost.
    Answered { early_audio: Option<Vec<i16>> },
}

/// Why a frame was refused. The message is what goes in the log line and the close reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("{0}")]
    Malformed(String),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("{0} is not supported on this transport")]
    Unsupported(&'static str),
}

/// The interface every telephony protocol implements.
pub trait Transport: Send + Sync {
    /// Short name for logs, metrics and the result's `transport` field.
    fn name(&self) -> &'static str;
    /// The call's bot config, once fetched (credentials for REST primitives, options).
    fn on_config(&mut self, cfg: &cxb_wire::BotConfig) {
        let _ = cfg;
    }
    /// When the config cannot be had, does this transport record a result (and with which
    /// `disconnected_by`) instead of only refusing? Exotel records `outside_hours`.
    fn config_failure_result(&self) -> Option<cxb_wire::DisconnectedBy> {
        None
    }
    /// May the bot transfer calls on this transport? (Decides whether the transfer tool is offered.)
    fn supports_transfer(&self) -> bool {
        false
    }
    /// Feed a handshake frame.
    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError>;
    fn meta(&self) -> &CallMeta;
    /// Parse a text frame once the call runs.
    fn on_text(&mut self, text: &str) -> Result<Inbound, ProtocolError>;
    /// Parse a binary frame once the call runs.
    fn on_binary(&mut self, bytes: &[u8]) -> Result<Inbound, ProtocolError> {
        let _ = bytes;
        Err(ProtocolError::Unsupported("binary frames"))
    }
    /// One 20 ms frame of bot audio. May buffer (protocols with minimum chunk sizes).
    fn audio(&mut self, frame: &[i16], out: &mut Vec<OutFrame>);
    /// The engine has released the last frame of a bot utterance. Protocols that buffer (Exotel's
    /// 3.2 KB minimum chunk) flush the remainder here, and protocols with playback marks place
    /// one (its echo tells the adapter the utterance was really played). Default: nothing.
    /// Returns the name of the mark placed, if any, so its echo can be matched to the utterance.
    fn utterance_done(&mut self, out: &mut Vec<OutFrame>) -> Option<String> {
        let _ = out;
        None
    }
    /// Barge-in: drop whatever the far end has queued.
    fn clear(&mut self, out: &mut Vec<OutFrame>);
    /// The bot hangs up.
    fn hang_up(&mut self, out: &mut Vec<OutFrame>);
    /// Transfer the call, when the transport can.
    fn transfer(&mut self, to: &str, reason: &str, out: &mut Vec<OutFrame>) -> Result<(), ProtocolError> {
        let _ = (to, reason, out);
        Err(ProtocolError::Unsupported("transfer"))
    }
}
