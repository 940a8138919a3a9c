//! Agent Desk handoff (contract §6.7): what cxb-core does after the bot escalates a LiveKit
//! call (inbound, outbound or attach) to a human agent.
//!
//! - [`protocol`]: the durable CXB API requests (`enqueue`, then `events`, `transcript`,
//!   `recording` and `customer-disconnected` updates) as [`cxb_delivery::NewEntry`]s for the
//!   outbox, with their JSON bodies. The keys are our decision (the contract leaves them
//!   [UNCERTAIN]); `docs/agent-desk.md` documents them for CXB API implementers.
//! - [`hold`]: the sans-IO hold worker that keeps the caller engaged (message, music,
//!   reminders) until an agent joins, and bounds every wait.
//!
//! The crate does no I/O of its own apart from [`HoldAudio::load`] reading a WAV file.

#![deny(unsafe_code)]

pub mod hold;
pub mod protocol;

pub use hold::{Hold, HoldAction, HoldAudio, HoldConfig, HoldError, HoldInput, HoldOutcome};
pub use protocol::{
    api_base_from_config_url, wall_clock, AgentDesk, AgentDeskError, AgentDeskEvent, Caller, CustomerDisconnected,
    EnqueueRequest, EnqueueTarget, EventsUpdate, RecordingUpdate, Role, TranscriptEntry, TranscriptUpdate,
};
