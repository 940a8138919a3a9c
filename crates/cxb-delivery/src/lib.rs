//! Durable delivery for cxb-core: the outbox that makes call results, Agent
//! Desk handoff requests and recording uploads survive crashes and receiver
//! outages. See [`outbox`]; recording uploads to S3-compatible storage and local
//! retention are in [`storage`]; the per-call crash journal a restart turns into
//! results is in [`journal`].

#![deny(unsafe_code)]

pub mod journal;
pub mod outbox;
pub mod storage;

pub use outbox::{
    Deliverer, Entry, EntryDetail, EntryId, EntrySummary, HttpBody, HttpTarget, NewEntry, Outbox, OutboxConfig,
    OutboxError, OutboxStats, Outcome, State, Target,
};
