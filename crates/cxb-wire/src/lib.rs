//! Serde types for everything cxb-core puts on or reads off the wire: the runtime bot config
//! (contract §4), the call-results payload (§5), the health bodies (§2.3) and the dialler
//! WebSocket protocol (§6.1). Data and parsing only — no I/O.

pub mod config;
pub mod dialler;
pub mod health;
pub mod knowledge;
pub mod llm;
pub mod result;
pub mod serde_util;
pub mod transfer;

pub use config::BotConfig;
pub use result::{CallResultsPayload, DisconnectedBy};
