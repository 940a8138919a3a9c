use cxb_wire::llm::ChatRequest;
use tokio::sync::mpsc;

use crate::llm::{LlmEvent, LlmParams};
use crate::ProviderError;

pub(crate) async fn run(_http: reqwest::Client, _params: LlmParams, _req: ChatRequest, tx: mpsc::Sender<LlmEvent>) {
    let _ = tx.send(LlmEvent::Error(ProviderError::Unsupported("openai (not yet implemented)".into()))).await;
}
