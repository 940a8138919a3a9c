//! Telephony transport protocols as sans-IO adapters. A transport turns its wire frames into
//! [`Inbound`] events and the driver's audio/clear/hang-up/transfer into wire frames; the socket
//! itself belongs to the worker. Adding a protocol means adding a module here and its route —
//! nothing in the engine or the driver changes.

pub mod dialler;

use serde_json::{Map, Value};

/// A frame to put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum OutFrame {
    Text(String),
    Binary(Vec<u8>),
    /// Close the socket with this code and reason.
    Close {
        code: u16,
        reason: String,
    },
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

/// Metadata extracted during the handshake.
#[derive(Debug, Clone, Default, PartialEq)]
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
pub trait Transport: Send {
    /// Short name for logs, metrics and the result's `transport` field.
    fn name(&self) -> &'static str;
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
