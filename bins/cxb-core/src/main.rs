//! cxb-core binary: settings from env/flags → run the worker.

use clap::Parser;
use cxb_core::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse().resolve_aliases();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if settings.log_format == "json" {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    cxb_core::run(settings).await?;
    Ok(())
}
