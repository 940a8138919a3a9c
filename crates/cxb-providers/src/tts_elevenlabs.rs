use tokio::sync::mpsc;

use crate::tts::{TtsEvent, TtsHandle, TtsParams};
use crate::ProviderError;

pub(crate) async fn connect(_params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    Err(ProviderError::Unsupported("not yet implemented".into()))
}
