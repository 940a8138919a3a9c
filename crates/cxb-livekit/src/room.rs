//! The seam between call logic and LiveKit room media.
//!
//! Route and call logic talk to a room only through [`RoomConnector`] and [`RoomHandle`]; the
//! real implementation (LiveKit's FFI engine, crate `cxb-livekit-ffi`) and the in-memory fake
//! used by tests both provide them. Everything is non-blocking: room events arrive on a bounded
//! tokio channel, outgoing audio is handed over without awaiting.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// Where and as whom to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// `wss://…` LiveKit URL.
    pub url: String,
    /// Access token (JWT) with `roomJoin` for `room_name`.
    pub token: String,
    pub room_name: String,
    /// Our own identity in the room (the bot).
    pub identity: String,
    /// Rate of the published track and of the frames delivered in [`RoomEvent::Audio`] (16 000).
    pub sample_rate: u32,
    /// Always 1 (mono) for calls.
    pub num_channels: u32,
}

/// LiveKit participant kinds that matter to calls (`ParticipantInfo.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantKind {
    Standard,
    Ingress,
    Egress,
    Sip,
    Agent,
    Other(i32),
}

impl ParticipantKind {
    /// From the protobuf `ParticipantInfo.Kind` number (SIP = 3, AGENT = 4).
    pub fn from_proto(kind: i32) -> Self {
        match kind {
            0 => ParticipantKind::Standard,
            1 => ParticipantKind::Ingress,
            2 => ParticipantKind::Egress,
            3 => ParticipantKind::Sip,
            4 => ParticipantKind::Agent,
            other => ParticipantKind::Other(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub identity: String,
    pub kind: ParticipantKind,
    /// Participant attributes, e.g. `sip.callStatus`, `sip.phoneNumber`, `sip.h.<header>`.
    pub attributes: BTreeMap<String, String>,
}

/// Something that happened in the room.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    /// A remote participant is in the room (those present at join are reported this way too).
    ParticipantJoined(Participant),
    /// Attributes changed (for SIP: `sip.callStatus` going `ringing` → `active` → `hangup`).
    AttributesChanged {
        identity: String,
        attributes: BTreeMap<String, String>,
    },
    ParticipantLeft {
        identity: String,
        reason: Option<String>,
    },
    /// Mono PCM from a subscribed remote audio track, at the join sample rate.
    Audio {
        identity: String,
        pcm: Vec<i16>,
    },
    /// DTMF received from a participant (SIP).
    Dtmf {
        identity: String,
        digit: String,
    },
    /// We left the room or lost it for good.
    Disconnected {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("could not connect to the room: {0}")]
    Connect(String),
    #[error("the room connection is closed")]
    Closed,
    #[error("room media error: {0}")]
    Media(String),
    #[error("the LiveKit engine is not available: {0}")]
    Unavailable(String),
}

/// Bot-side media and control of a joined room. Methods never block on the network.
pub trait RoomMedia: Send + Sync {
    /// Queue one frame of bot audio (mono, join rate) on the published track.
    fn capture_frame(&self, pcm: &[i16]) -> Result<(), RoomError>;
    /// Drop bot audio queued in the source but not yet sent (barge-in).
    fn clear_buffer(&self);
    /// Send DTMF digits where the room supports it (SIP participants).
    fn send_dtmf(&self, digits: &str) -> Result<(), RoomError>;
    /// Leave the room. Idempotent.
    fn disconnect(&self);
}

/// A joined room: events in, media and control out.
pub struct RoomHandle {
    pub events: mpsc::Receiver<RoomEvent>,
    pub media: Box<dyn RoomMedia>,
}

impl std::fmt::Debug for RoomHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHandle").finish_non_exhaustive()
    }
}

pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<RoomHandle, RoomError>> + Send>>;

/// Joins rooms. Shared across calls (`Arc<dyn RoomConnector>`).
pub trait RoomConnector: Send + Sync + 'static {
    fn connect(&self, request: JoinRequest) -> ConnectFuture;

    /// False when joins cannot work at all (the media engine failed to load): routes refuse
    /// calls up front instead of accepting ones they cannot carry.
    fn is_available(&self) -> bool {
        true
    }
}
