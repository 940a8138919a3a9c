//! cxb-core binary: settings from env/flags → run the worker, or an operator subcommand.

use clap::Parser;
use cxb_core::settings::{Command, OutboxOp};
use cxb_core::Settings;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse().resolve_aliases();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if settings.runtime_threads > 0 {
        rt.worker_threads(settings.runtime_threads);
    }
    rt.build()?.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if settings.log_format == "json" {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        // Colours only on a terminal: log files and collectors get plain `key=value` lines.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    }
    match settings.command.clone() {
        Some(Command::Outbox { url, op }) => outbox_command(&url, settings.secret.as_deref(), op).await,
        None => {
            cxb_core::run(settings).await?;
            Ok(())
        }
    }
}

/// `cxb-core outbox ...`: talk to a running worker's admin API and print JSON.
async fn outbox_command(url: &str, secret: Option<&str>, op: OutboxOp) -> anyhow::Result<()> {
    let base = format!("{}/admin/outbox", url.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let req = match op {
        OutboxOp::List { state } => http.get(format!("{base}?state={state}")),
        OutboxOp::Show { id } => http.get(format!("{base}/{id}")),
        OutboxOp::Replay { id } => http.post(format!("{base}/{id}/replay")),
        OutboxOp::Discard { id } => http.post(format!("{base}/{id}/discard")),
        OutboxOp::Stats => http.get(format!("{base}/stats")),
    };
    let req = match secret {
        Some(s) => req.header("X-CXBCore-Secret", s).header("X-CXB-Core-Secret", s),
        None => req,
    };
    let resp = req.send().await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        anyhow::bail!("worker answered HTTP {status}");
    }
    Ok(())
}
