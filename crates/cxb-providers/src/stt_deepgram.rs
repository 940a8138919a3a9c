use tokio::sync::mpsc;

use crate::stt::{SttEvent, SttHandle, SttParams};
use crate::ProviderError;

pub(crate) async fn connect(_params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    Err(ProviderError::Unsupported("deepgram (not yet implemented)".into()))
}
