//! cxb-sim CLI: `serve` (provider doubles + fake CXB API on one port) and `dial` (load generator).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use cxb_sim::dialler::{run_dial_with, DialOptions, ProtocolOptions};
use cxb_sim::{raise_fd_limit, start, Script, ServeOptions};

#[derive(Parser)]
#[command(name = "cxb-sim", version, about = "Provider doubles, fake CXB API and load dialler for cxb-core")]
struct Cli {
    /// Runtime threads: 0 = one per CPU; 1 = a single-threaded runtime. On a machine shared with
    /// the worker under test, 1 keeps the load generator on one core at a time and saves the
    /// cross-thread wake-ups of a multi-threaded scheduler (measured at 500 calls on 2 cores:
    /// dialler −11 %, doubles −7 % CPU; scripts/bench-load.sh uses 1).
    #[arg(long, global = true, default_value_t = 0, env = "CXB_SIM_THREADS")]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the Deepgram/OpenAI/Cartesia/ElevenLabs doubles and the fake CXB API on one port.
    Serve(ServeArgs),
    /// Drive calls against a worker's telephony WebSocket endpoint and print a JSON summary.
    Dial(DialArgs),
}

#[derive(Parser)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write `127.0.0.1:PORT` here (atomically) once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Require this value in X-CXBCore-Secret or X-CXB-Core-Secret on the fake API.
    #[arg(long, env = "CXB_SIM_SECRET")]
    secret: Option<String>,
    #[arg(long, default_value_t = 80)]
    stt_latency_ms: u64,
    #[arg(long, default_value_t = 200)]
    stt_endpointing_ms: u64,
    #[arg(long, default_value_t = 150)]
    llm_ttft_ms: u64,
    #[arg(long, default_value_t = 0)]
    llm_token_interval_ms: u64,
    #[arg(long, default_value_t = 100)]
    tts_ttfb_ms: u64,
    /// Delay before the Sarvam and Aura TTS doubles answer a WebSocket upgrade (TLS stand-in).
    #[arg(long, default_value_t = 0)]
    tts_connect_ms: u64,
    /// Conversation script; default: the embedded copy of assets/sim/script.json.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Append every accepted results payload as one JSON line.
    #[arg(long)]
    results_file: Option<PathBuf>,
    /// Host (name or IP) a worker on another machine reaches this server by: used in the URLs
    /// the fake API serves. Default: the --listen address (127.0.0.1 when it is 0.0.0.0).
    #[arg(long)]
    public_host: Option<String>,
    /// Deepgram NET-0001 idle timeout (ms).
    #[arg(long, default_value_t = 10_000, hide = true)]
    stt_idle_timeout_ms: u64,
    /// How long the `slow-config` bot sleeps (ms).
    #[arg(long, default_value_t = 30_000, hide = true)]
    slow_config_ms: u64,
}

#[derive(Parser)]
struct DialArgs {
    /// Worker dialler endpoint, e.g. ws://127.0.0.1:8080/ws/demo
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// Calls in flight at once (default: all).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    #[arg(long, default_value = "assets/sim/scenario.json")]
    scenario: PathBuf,
    /// Delay between call starts.
    #[arg(long, default_value_t = 10)]
    ramp_ms: u64,
    /// Upper bound for one call, connect to close.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// The sim server, to read the injected latencies from /sim/settings.
    #[arg(long)]
    sim_url: Option<String>,
    /// Also write the summary here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    frame_ms: u64,
    /// Telephony protocol to speak (the URL must be the matching worker route, e.g.
    /// ws://127.0.0.1:8080/exotel/demo).
    #[arg(long, value_enum, default_value = "dialler")]
    protocol: cxb_sim::protocols::Protocol,
    /// Wire sample rate (default per protocol: 8000; Vonage 16000).
    #[arg(long)]
    sample_rate: Option<u32>,
    /// Telnyx: PCMU | PCMA. Plivo: mulaw | l16. Exotel: the `media_format.encoding` label of
    /// `start` (default base64), or a JSON object for the whole `media_format`.
    #[arg(long)]
    encoding: Option<String>,
}

fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("addr");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let script = match &a.script {
        Some(p) => Script::load(p)?,
        None => Script::embedded(),
    };
    let opts = ServeOptions {
        listen: a.listen,
        secret: a.secret,
        stt_latency_ms: a.stt_latency_ms,
        stt_endpointing_ms: a.stt_endpointing_ms,
        llm_ttft_ms: a.llm_ttft_ms,
        llm_token_interval_ms: a.llm_token_interval_ms,
        tts_ttfb_ms: a.tts_ttfb_ms,
        tts_connect_ms: a.tts_connect_ms,
        script,
        results_file: a.results_file,
        public_host: a.public_host,
        stt_idle_timeout: Duration::from_millis(a.stt_idle_timeout_ms),
        slow_config_delay: Duration::from_millis(a.slow_config_ms),
        ..ServeOptions::default()
    };
    let mut server = start(opts).await?;
    let addr = server.state.public_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::json!({ "listening": addr }))?;
        out.flush()?;
    }
    if let Some(p) = &a.addr_file {
        write_atomic(p, &addr).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    tracing::info!("cxb-sim serving on {addr}");
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! {
        r = server.wait() => return r,
        _ = shutdown => tracing::info!("shutting down"),
    }
    server.shutdown().await;
    Ok(())
}

async fn dial(a: DialArgs) -> anyhow::Result<()> {
    let opts = DialOptions {
        url: a.url,
        calls: a.calls,
        concurrency: a.concurrency,
        scenario: a.scenario,
        ramp_ms: a.ramp_ms,
        timeout_secs: a.timeout_secs,
        sim_url: a.sim_url,
        out: a.out,
        frame_ms: a.frame_ms,
    };
    let proto = ProtocolOptions { protocol: a.protocol, sample_rate: a.sample_rate, encoding: a.encoding };
    let summary = run_dial_with(opts, proto).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    out.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(n) = raise_fd_limit() {
        tracing::debug!("open-files limit: {n}");
    }
    let rt = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Dial(a) => dial(a).await,
        }
    })
}
