//! A LiveKit room as the call's link to the caller.
//!
//! Audio: the bot's 20 ms frames go to the published track's source without waiting (the
//! engine already paces them in real time, so the source's queue stays short and a barge-in's
//! `clear_buffer` really stops speech); the caller's subscribed track arrives at 16 kHz.
//! Events: the caller leaving, a SIP `hangup` status or the room closing end the call as
//! `customer`; after an Agent Desk handoff, other people joining are agents.

use std::collections::HashSet;
use std::time::Duration;

use cxb_livekit::room::{ParticipantKind, RoomEvent, RoomHandle};
use cxb_livekit::{ServerApi, TransferSipParticipant};
use cxb_transports::{CallMeta, Inbound};
use tracing::{debug, info, warn, Instrument};

use crate::link::{CallLink, LinkEvent, TransferError, TransferStart};

/// Time for the source's queued audio to reach the caller before we leave the room.
const PLAYOUT_DRAIN: Duration = Duration::from_millis(250);
/// Bound on removing the caller's SIP leg when the bot hangs up.
const HANGUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which remote participant is the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerMatch {
    /// This identity (attach: `sip-{to_number}`; dial-out: the identity we dialled with).
    Identity(String),
    /// The first SIP participant (inbound dispatch when the identity was not known up front).
    AnySip,
    /// The first ordinary participant (the browser widget).
    AnyStandard,
}

impl CallerMatch {
    fn accepts(&self, identity: &str, kind: ParticipantKind) -> bool {
        match self {
            CallerMatch::Identity(id) => id == identity,
            CallerMatch::AnySip => kind == ParticipantKind::Sip,
            CallerMatch::AnyStandard => kind == ParticipantKind::Standard,
        }
    }
}

pub struct RoomLink {
    name: &'static str,
    meta: CallMeta,
    room: RoomHandle,
    room_name: String,
    caller: CallerMatch,
    caller_identity: Option<String>,
    caller_is_sip: bool,
    /// For SIP REFER and for hanging up the caller's SIP leg.
    server: Option<ServerApi>,
    country_code: Option<String>,
    handoff: bool,
    agents: HashSet<String>,
    /// A media error from queueing bot audio, reported on the next `recv`.
    media_error: Option<String>,
    finished: bool,
}

impl RoomLink {
    /// `name`: `livekit_inbound`, `livekit_outbound`, `attach` or `widget`.
    pub fn new(
        name: &'static str,
        meta: CallMeta,
        room: RoomHandle,
        room_name: String,
        caller: CallerMatch,
        server: Option<ServerApi>,
        country_code: Option<String>,
    ) -> Self {
        let caller_is_sip = !matches!(caller, CallerMatch::AnyStandard);
        let caller_identity = match &caller {
            CallerMatch::Identity(id) => Some(id.clone()),
            _ => None,
        };
        Self {
            name,
            meta,
            room,
            room_name,
            caller,
            caller_identity,
            caller_is_sip,
            server,
            country_code,
            handoff: name != "widget",
            agents: HashSet::new(),
            media_error: None,
            finished: false,
        }
    }

    fn is_caller(&self, identity: &str) -> bool {
        self.caller_identity.as_deref() == Some(identity)
    }

    /// One room event → what the driver should hear about (most are bookkeeping only).
    fn on_event(&mut self, ev: RoomEvent) -> Option<LinkEvent> {
        match ev {
            RoomEvent::Audio { identity, pcm } => {
                if self.is_caller(&identity) {
                    Some(LinkEvent::Inbound(Inbound::Audio(pcm)))
                } else if self.agents.contains(&identity) {
                    Some(LinkEvent::AgentAudio(pcm))
                } else {
                    None
                }
            }
            RoomEvent::ParticipantJoined(p) => {
                if self.caller_identity.is_none() && self.caller.accepts(&p.identity, p.kind) {
                    info!(identity = %p.identity, kind = ?p.kind, "caller is in the room");
                    self.caller_is_sip = p.kind == ParticipantKind::Sip;
                    self.caller_identity = Some(p.identity);
                    return None;
                }
                if self.is_caller(&p.identity) {
                    self.caller_is_sip = p.kind == ParticipantKind::Sip;
                    return None;
                }
                // Anyone else who joins a call that can be handed off is a prospective agent;
                // the driver decides whether it matters (only after a handoff).
                if self.handoff && matches!(p.kind, ParticipantKind::Standard) {
                    self.agents.insert(p.identity.clone());
                    return Some(LinkEvent::AgentJoined { identity: p.identity });
                }
                debug!(identity = %p.identity, kind = ?p.kind, "participant joined");
                None
            }
            RoomEvent::AttributesChanged { identity, attributes } => {
                let status = attributes.get("sip.callStatus").map(String::as_str);
                if self.is_caller(&identity) && status == Some("hangup") {
                    return Some(LinkEvent::Gone { why: "the caller's SIP call hung up".into() });
                }
                None
            }
            RoomEvent::ParticipantLeft { identity, reason } => {
                if self.is_caller(&identity) {
                    let why = format!("the caller left the room ({})", reason.as_deref().unwrap_or("no reason"));
                    return Some(LinkEvent::Gone { why });
                }
                if self.agents.remove(&identity) {
                    return Some(LinkEvent::AgentLeft { identity });
                }
                None
            }
            RoomEvent::Dtmf { identity, digit } => (self.is_caller(&identity) || self.caller_identity.is_none())
                .then_some(LinkEvent::Inbound(Inbound::Dtmf(digit))),
            RoomEvent::Disconnected { reason } => Some(LinkEvent::Gone { why: format!("room disconnected: {reason}") }),
        }
    }
}

impl CallLink for RoomLink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn transfer_family(&self) -> &'static str {
        // Widget calls cannot transfer (contract §4.4); the SIP ones use REFER / Agent Desk.
        self.name
    }

    fn meta(&self) -> &CallMeta {
        &self.meta
    }

    async fn recv(&mut self) -> LinkEvent {
        loop {
            if let Some(error) = self.media_error.take() {
                return LinkEvent::Failed {
                    event: Some(("room_media_error", serde_json::json!({"error": error}))),
                    error,
                };
            }
            // `mpsc::Receiver::recv` is cancel-safe, and nothing is held across it.
            let Some(ev) = self.room.events.recv().await else {
                return LinkEvent::Gone { why: "the room's event stream ended".into() };
            };
            if let Some(out) = self.on_event(ev) {
                return out;
            }
        }
    }

    fn audio(&mut self, frame: &[i16]) {
        if self.media_error.is_some() {
            return;
        }
        if let Err(e) = self.room.media.capture_frame(frame) {
            warn!(error = %e, "could not queue bot audio in the room");
            self.media_error = Some(e.to_string());
        }
    }

    fn clear(&mut self) {
        self.room.media.clear_buffer();
    }

    fn utterance_done(&mut self) -> Option<String> {
        // Rooms have no playback marks: the engine's own real-time pacing says what was heard.
        None
    }

    fn hang_up(&mut self) {
        // Nothing to send now: `finish(bot_hung_up = true)` removes the caller's SIP leg after
        // the last audio has played out.
    }

    fn transfer(&mut self, destination: &str, method: &str, kind: &str, _reason: &str) -> TransferStart {
        self.sip_refer(destination, method, kind)
    }

    async fn flush(&mut self) -> bool {
        true
    }

    async fn finish(&mut self, bot_hung_up: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        if bot_hung_up {
            tokio::time::sleep(PLAYOUT_DRAIN).await;
            // Leaving the room does not end a phone call: the caller's SIP leg is removed so
            // the carrier hangs up (a widget user just sees the bot leave).
            if let (true, Some(server), Some(identity)) = (self.caller_is_sip, &self.server, &self.caller_identity) {
                match tokio::time::timeout(HANGUP_TIMEOUT, server.remove_participant(&self.room_name, identity)).await {
                    Ok(Ok(())) => info!(%identity, "removed the caller's SIP leg"),
                    Ok(Err(e)) if e.is_not_found() => debug!(%identity, "the caller's SIP leg was already gone"),
                    Ok(Err(e)) => warn!(error = %e, %identity, "could not remove the caller's SIP leg"),
                    Err(_) => warn!(%identity, "removing the caller's SIP leg timed out"),
                }
            }
        }
        self.room.media.disconnect();
    }

    fn supports_handoff(&self) -> bool {
        self.handoff
    }

    fn caller_identity(&self) -> Option<&str> {
        self.caller_identity.as_deref()
    }
}

impl RoomLink {
    /// SIP REFER of the caller's leg; `kind` is the target's type (`sip_uri`, `tel_uri`,
    /// `phone_number`), checked by `transfer_destination`.
    fn sip_refer(&mut self, destination: &str, method: &str, kind: &str) -> TransferStart {
        if method != cxb_wire::transfer::METHOD_SIP_REFER {
            return TransferStart::Done(Err(TransferError::Method {
                method: method.to_string(),
                transport: self.name,
            }));
        }
        let (Some(server), Some(identity)) = (self.server.clone(), self.caller_identity.clone()) else {
            return TransferStart::Done(Err(TransferError::NoSipParticipant));
        };
        if !self.caller_is_sip {
            return TransferStart::Done(Err(TransferError::NotSip));
        }
        let to = match cxb_livekit::transfer_destination(kind, destination, self.country_code.as_deref()) {
            Ok(to) => to,
            Err(e) => return TransferStart::Done(Err(e.into())),
        };
        let request = TransferSipParticipant::new(self.room_name.clone(), identity, to);
        TransferStart::Pending(Box::pin(
            async move {
                server
                    .transfer_sip_participant(&request)
                    .await
                    .map_err(|source| TransferError::Refer { sip_status: source.sip_status_code(), source })
            }
            .in_current_span(),
        ))
    }
}
