//! Post-call processing (contract §8): auto-dispositions, LLM analysis and QC, callback
//! extraction, telemetry summaries and transfer state, applied to the result payload.

/// Post-call settings (env names documented in the README).
#[derive(Debug, Clone, clap::Args)]
pub struct PostCallSettings {}
