//! WebSocket routes of the telephony media-stream providers. Each handler only builds the
//! protocol's adapter (from the URL's query and the worker's telephony settings) and hands the
//! socket to the shared call driver through [`crate::app::start_ws_call`].
//!
//! | Route | Provider | Audio |
//! |---|---|---|
//! | `WS /exotel/{bot_id}[?sample-rate=8000\|16000\|24000&k=v…]` | Exotel Voicebot applet | PCM16LE 8/16/24 kHz, base64 |
//! | `WS /twilio/{bot_id}` | Twilio Media Streams | μ-law 8 kHz, base64 |
//! | `WS /telnyx/{bot_id}` | Telnyx media streaming | PCMU / PCMA 8 kHz, base64 |
//! | `WS /plivo/{bot_id}[?from=…&to=…&direction=…]` | Plivo Audio Streaming | μ-law 8 kHz or L16 8/16 kHz, base64 |
//! | `WS /vonage/{bot_id}` | Vonage Voice WebSocket | L16 8/16/24 kHz, binary frames |

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cxb_transports::exotel::Exotel;
use cxb_transports::plivo::Plivo;
use cxb_transports::telnyx::Telnyx;
use cxb_transports::twilio::Twilio;
use cxb_transports::vonage::Vonage;
use serde_json::json;
use tracing::warn;

use crate::app::{start_ws_call, AppState};

type Pairs = Query<Vec<(String, String)>>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/exotel/{bot_id}", get(exotel))
        .route("/twilio/{bot_id}", get(twilio))
        .route("/telnyx/{bot_id}", get(telnyx))
        .route("/plivo/{bot_id}", get(plivo))
        .route("/vonage/{bot_id}", get(vonage))
}

async fn exotel(
    State(app): State<AppState>,
    Path(bot_id): Path<String>,
    Query(q): Pairs,
    ws: WebSocketUpgrade,
) -> Response {
    match Exotel::from_query(&q) {
        Ok(t) => start_ws_call(app, bot_id, ws, t),
        Err(e) => {
            warn!(%bot_id, transport = "exotel", error = %e, "refusing call: bad stream URL");
            metrics::counter!("cxb_calls_rejected_total", "reason" => "bad_url").increment(1);
            (StatusCode::BAD_REQUEST, Json(json!({"status":"rejected","error": e.to_string()}))).into_response()
        }
    }
}

async fn twilio(State(app): State<AppState>, Path(bot_id): Path<String>, ws: WebSocketUpgrade) -> Response {
    let t = Twilio::new(app.settings.telephony.twilio());
    start_ws_call(app, bot_id, ws, t)
}

async fn telnyx(State(app): State<AppState>, Path(bot_id): Path<String>, ws: WebSocketUpgrade) -> Response {
    let t = Telnyx::new(app.settings.telephony.telnyx());
    start_ws_call(app, bot_id, ws, t)
}

async fn plivo(
    State(app): State<AppState>,
    Path(bot_id): Path<String>,
    Query(q): Pairs,
    ws: WebSocketUpgrade,
) -> Response {
    let t = Plivo::new(app.settings.telephony.plivo(), &q);
    start_ws_call(app, bot_id, ws, t)
}

async fn vonage(State(app): State<AppState>, Path(bot_id): Path<String>, ws: WebSocketUpgrade) -> Response {
    start_ws_call(app, bot_id, ws, Vonage::new())
}
