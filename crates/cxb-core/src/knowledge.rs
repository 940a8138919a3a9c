//! Where the `search_knowledge` tool searches, chosen once at start: CXB API's knowledge search
//! when a CXB API is configured (it owns ingestion and search), else the local index of
//! `CXBCORE_KNOWLEDGE_DIR` for the embedded default (re-indexed when its files change).

use std::sync::Arc;
use std::time::Duration;

use cxb_knowledge::{ApiKnowledge, KnowledgeSource, KnowledgeTool, LocalKnowledge, DEFAULT_REFRESH_INTERVAL};
use cxb_wire::BotConfig;
use tracing::{info, warn};

use crate::settings::Settings;

/// The process's knowledge source, or `None` when there is none to search (logged once); a bot
/// with knowledge enabled then runs without the tool.
pub async fn source(settings: &Settings, http: &reqwest::Client) -> Option<Arc<dyn KnowledgeSource>> {
    let timeout = Duration::from_millis(settings.knowledge_timeout_ms.max(1));
    if let Some(base) = settings.api_base() {
        return match ApiKnowledge::new(&base, settings.secret.clone(), http.clone(), timeout) {
            Ok(api) => Some(Arc::new(api)),
            Err(e) => {
                warn!(error = %e, "knowledge search disabled: the CXB API base is unusable");
                None
            }
        };
    }
    let dir = settings.knowledge_dir.clone();
    let opened = tokio::task::spawn_blocking(move || LocalKnowledge::open(dir)).await;
    match opened {
        Ok(Ok(local)) => {
            info!(
                dir = %local.root().display(),
                knowledge_bases = local.knowledge_bases().len(),
                chunks = local.chunk_count(),
                "local knowledge index ready"
            );
            // Lives as long as the process: the index follows edits to its files.
            let _refresher = local.spawn_refresher(DEFAULT_REFRESH_INTERVAL);
            Some(Arc::new(local))
        }
        Ok(Err(e)) => {
            info!(error = %e, dir = %settings.knowledge_dir.display(), "no local knowledge index");
            None
        }
        Err(e) => {
            warn!(error = %e, "the knowledge indexer did not run");
            None
        }
    }
}

/// The call's `search_knowledge` tool, when its bot enables knowledge and a source exists.
pub(crate) fn tool_for(
    cfg: &BotConfig,
    source: Option<&Arc<dyn KnowledgeSource>>,
    settings: &Settings,
) -> Option<KnowledgeTool> {
    if !cfg.knowledge.knowledge_enabled {
        return None;
    }
    let Some(source) = source else {
        warn!("the bot enables knowledge search but this worker has no knowledge source; no search_knowledge tool");
        return None;
    };
    let timeout = Duration::from_millis(settings.knowledge_timeout_ms.max(1));
    Some(KnowledgeTool::new(cfg.knowledge.clone(), source.clone()).with_timeout(timeout))
}
