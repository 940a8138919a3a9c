//! Tools the LLM may call: the built-ins and a round of custom tools.

mod builtin;
mod round;

pub(crate) use builtin::offered;
pub use builtin::{END_CALL_TOOL, SEND_DTMF_TOOL, TRANSFER_TOOL, VOICEMAIL_TOOL};
pub(crate) use round::ToolRound;
