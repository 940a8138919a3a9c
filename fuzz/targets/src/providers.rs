//! Provider clients: the parsers of what vendors send back, through the pure entry points of
//! `cxb_providers::parsers` (the same functions the clients' sessions call).
//!
//! Single-message parsers take the input as one message; stream parsers take records
//! (`crate::records`): `T` a server text frame, plus per target the session's own steps.

use std::collections::HashMap;

use base64::Engine as _;
use cxb_providers::llm::LlmEvent;
use cxb_providers::parsers::{
    self, CartesiaMessages, CartesiaReaction, ElevenLabsContext, FluxIncoming, SarvamTtsIncoming,
};
use cxb_providers::stt::SttEvent;
use cxb_providers::stt_flux::FluxEvent;
use cxb_providers::tts::TtsEvent;
use cxb_providers::ProviderError;
use serde::Deserialize;

use crate::records::records;

/// Longest error detail the clients keep from a vendor message.
const MAX_DETAIL: usize = 512;

/// Deepgram live v1: one text frame.
pub fn deepgram(data: &[u8]) {
    let Some(text) = crate::text(data) else { return };
    if let Some(SttEvent::Transcript(t)) = parsers::deepgram_message(text) {
        assert!(t.is_final || !t.text.is_empty(), "an empty interim transcript is never surfaced");
    }
}

/// Deepgram Flux: a stream of `T` text frames.
pub fn flux(data: &[u8]) {
    for (kind, body) in records(data) {
        let Some(text) = crate::text(body).filter(|_| kind == b'T') else { continue };
        match parsers::flux_message(text) {
            Some(FluxIncoming::Fatal(ProviderError::Remote { detail, .. }))
            | Some(FluxIncoming::Event(FluxEvent::ConfigureFailed(detail))) => {
                assert!(detail.len() <= MAX_DETAIL, "error detail of {} bytes", detail.len());
            }
            _ => {}
        }
    }
}

/// A streaming LLM response body: each `T` record is one piece of the body as the network split
/// it (any bytes), then the body ends; an `E` record is a non-2xx answer's body instead (its
/// detail is read by `error_body`). Returns the closing events of a finished answer.
fn llm_sse(mut stream: parsers::LlmStream, error_body: fn(&str), data: &[u8]) -> Option<Vec<LlmEvent>> {
    for (kind, body) in records(data) {
        match kind {
            b'T' => match stream.feed(body) {
                Ok(events) => assert!(events.iter().all(|e| matches!(e, LlmEvent::Token(t) if !t.is_empty()))),
                Err(_) => return None,
            },
            b'E' => {
                error_body(&String::from_utf8_lossy(body));
                return None;
            }
            _ => {}
        }
    }
    let events = stream.finish(true).ok()?;
    assert!(matches!(events.last(), Some(LlmEvent::Done { .. })), "a finished stream ends with Done");
    Some(events)
}

pub fn openai_sse(data: &[u8]) {
    llm_sse(parsers::LlmStream::openai(), |_| {}, data);
}

/// Gemini (and Vertex AI): function calls come whole, so every call surfaced has a name and a
/// JSON object for arguments.
pub fn gemini_sse(data: &[u8]) {
    let error_body = |body: &str| {
        let _ = parsers::google_error_detail(body);
    };
    for event in llm_sse(parsers::LlmStream::gemini(), error_body, data).unwrap_or_default() {
        if let LlmEvent::ToolCalls(calls) = event {
            for call in calls {
                assert!(!call.name.is_empty() && !call.id.is_empty(), "call {call:?}");
                let args: serde_json::Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
                assert!(args.is_object(), "arguments {args}");
            }
        }
    }
}

pub fn anthropic_sse(data: &[u8]) {
    let error_body = |body: &str| {
        let _ = parsers::anthropic_error_detail(body);
    };
    llm_sse(parsers::LlmStream::anthropic(), error_body, data);
}

/// A status for the first input byte: the answers a Google endpoint gives.
fn google_status(byte: u8) -> u16 {
    const STATUSES: [u16; 10] = [200, 201, 400, 401, 403, 404, 408, 429, 500, 503];
    STATUSES[usize::from(byte) % STATUSES.len()]
}

/// Google's token endpoint: a status byte, then the answer's body. A token has a lifetime the
/// client can add to its clock.
pub fn google_token(data: &[u8]) {
    let Some((status, body)) = data.split_first() else { return };
    if let Ok((token, lifetime)) = parsers::google_token_answer(google_status(*status), &String::from_utf8_lossy(body))
    {
        assert!(!token.is_empty());
        assert!(lifetime <= parsers::GOOGLE_MAX_TOKEN_LIFETIME, "lifetime {lifetime:?}");
        assert!(std::time::Instant::now().checked_add(lifetime).is_some());
    }
}

/// A `cachedContents` create answer: a status byte, a flavour byte (even: the Gemini API, odd:
/// Vertex AI), then the body. A cache name the client accepts stays inside the API root's
/// `cachedContents` once it is a URL (it goes into the path of the extend calls).
pub fn gemini_cache(data: &[u8]) {
    let [status, flavour, body @ ..] = data else { return };
    let vertex = flavour % 2 == 1;
    let Ok(name) = parsers::gemini_created_cache(google_status(*status), &String::from_utf8_lossy(body), vertex) else {
        return;
    };
    let root = url::Url::parse(if vertex {
        "https://us-central1-aiplatform.googleapis.com/v1"
    } else {
        "https://generativelanguage.googleapis.com/v1beta"
    })
    .expect("a root URL");
    let url = parsers::gemini_cache_url(&root, &name);
    assert_eq!(url.host_str(), root.host_str());
    assert_eq!(url.path(), format!("{}/{name}", root.path()), "cache {name:?}");
    assert!(name.split('/').any(|s| s == "cachedContents"));
}

/// Cartesia: records `o` (the session speaks into the context named by the body), `c` (it cancels
/// that context) and `T` (a server text frame). A context's audio decodes to exactly the bytes of
/// its chunks, two per sample (an odd byte waits for the next chunk).
pub fn cartesia(data: &[u8]) {
    let mut messages = CartesiaMessages::default();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for (kind, body) in records(data) {
        let Some(text) = crate::text(body) else { continue };
        match kind {
            b'o' => messages.open(text),
            b'c' => messages.cancel(text),
            b'T' => {
                let chunk = chunk_bytes(text).filter(|(ctx, _)| messages.is_live(ctx));
                let audio = match messages.on_text(text) {
                    CartesiaReaction::Emit(TtsEvent::Audio { context_id, pcm }) => {
                        assert!(!pcm.is_empty() && messages.is_live(&context_id));
                        Some((context_id, pcm.len()))
                    }
                    CartesiaReaction::Emit(TtsEvent::Done { context_id }) => {
                        assert!(!messages.is_live(&context_id), "a done context stays closed");
                        None
                    }
                    _ => None,
                };
                match (chunk, audio) {
                    (Some((ctx, bytes)), Some((_, samples))) => tallies.entry(ctx).or_default().add(bytes, samples),
                    // A lone byte decodes to nothing (it is carried), and so does a refused frame.
                    (Some((ctx, 1)), None) => tallies.entry(ctx).or_default().uncertain = true,
                    (Some(_), None) | (None, None) => {}
                    // Accepted by the client but not by the generic JSON reading above.
                    (None, Some((ctx, _))) => tallies.entry(ctx).or_default().uncertain = true,
                }
            }
            _ => {}
        }
    }
    for (ctx, tally) in tallies {
        tally.check(&ctx);
    }
}

/// Audio bytes received and samples decoded, for one stream.
#[derive(Default)]
struct Tally {
    bytes: usize,
    samples: usize,
    /// Whether a frame's bytes counted could not be told from here.
    uncertain: bool,
}

impl Tally {
    fn add(&mut self, bytes: usize, samples: usize) {
        self.bytes += bytes;
        self.samples += samples;
    }

    fn check(&self, what: &str) {
        if !self.uncertain {
            assert_eq!(
                self.samples,
                self.bytes / 2,
                "{what}: {} bytes of audio decoded to {} samples",
                self.bytes,
                self.samples
            );
        }
    }
}

/// The fields of a Cartesia message that carry audio, read the way the client reads them (serde,
/// unknown fields skipped; a subset of the client's fields), so a frame the client accepts is read
/// here too.
#[derive(Deserialize)]
struct CartesiaAudio {
    #[serde(rename = "type")]
    kind: Option<String>,
    context_id: Option<String>,
    data: Option<String>,
}

/// The same for ElevenLabs.
#[derive(Deserialize)]
struct ElevenLabsAudio {
    audio: Option<String>,
}

fn decoded_len(b64: Option<&str>) -> Option<usize> {
    base64::engine::general_purpose::STANDARD.decode(b64.unwrap_or_default()).ok().map(|b| b.len())
}

/// The context and the audio byte count of a well-formed Cartesia `chunk` frame.
fn chunk_bytes(text: &str) -> Option<(String, usize)> {
    let m: CartesiaAudio = serde_json::from_str(text).ok()?;
    if m.kind.as_deref() != Some("chunk") {
        return None;
    }
    Some((m.context_id?, decoded_len(m.data.as_deref())?))
}

/// ElevenLabs: one context's socket. An optional first record `R` picks the output rate (its first
/// byte), then `T` server text frames. Audio decodes to exactly the bytes received, two per
/// sample.
pub fn elevenlabs(data: &[u8]) {
    const RATES: [u32; 5] = [8000, 16000, 22050, 24000, 44100];
    let mut decoder = None;
    let mut tally = Tally::default();
    for (kind, body) in records(data) {
        if kind == b'R' && decoder.is_none() {
            let rate = RATES[usize::from(body.first().copied().unwrap_or(0)) % RATES.len()];
            decoder = Some(ElevenLabsContext::new(rate));
            continue;
        }
        let Some(text) = crate::text(body).filter(|_| kind == b'T') else { continue };
        let decoder = decoder.get_or_insert_with(|| ElevenLabsContext::new(16000));
        match decoder.on_text(text) {
            // The client read the message: its audio field is what the generic reading sees.
            Ok(Some(message)) => {
                tally.add(audio_bytes(text), message.audio.map_or(0, |pcm| pcm.len()));
                if message.is_final {
                    break;
                }
            }
            Ok(None) => {}
            Err(ProviderError::Remote { .. }) => break,
            Err(e) => panic!("only the server's own errors end a context here: {e}"),
        }
    }
    if let Some(mut d) = decoder {
        let _ = d.finish();
    }
    tally.check("elevenlabs");
}

/// Bytes of an ElevenLabs message's audio (0 when absent or undecodable: dropped).
fn audio_bytes(text: &str) -> usize {
    let Ok(m) = serde_json::from_str::<ElevenLabsAudio>(text) else { return 0 };
    decoded_len(m.audio.as_deref()).unwrap_or(0)
}

/// A streaming STT dialect on the shared session loop: records `T` (a server text frame), `F` (our
/// VAD ended the turn: finalize), `E` (the driver closes the stream); then the socket ends. Every
/// transcript surfaced has words, trimmed; nothing is read after the server's last message.
fn stt_dialect(mut dialect: parsers::SttDialect, data: &[u8]) {
    let mut events = Vec::new();
    for (kind, body) in records(data) {
        match kind {
            b'T' => {
                let Some(text) = crate::text(body) else { continue };
                let parsed = dialect.on_text(text);
                events.extend(parsed.events);
                if parsed.finished {
                    break;
                }
            }
            b'F' => dialect.finalize(),
            b'E' => dialect.end_of_stream(),
            _ => {}
        }
    }
    events.extend(dialect.on_end());
    for event in events {
        if let SttEvent::Transcript(t) = event {
            assert!(!t.text.is_empty() && t.text.trim() == t.text, "transcript {:?}", t.text);
        }
    }
}

pub fn soniox(data: &[u8]) {
    stt_dialect(parsers::SttDialect::soniox(), data);
}

pub fn sarvam_stt(data: &[u8]) {
    stt_dialect(parsers::SttDialect::sarvam(), data);
}

/// Deepgram Aura: records `T` (a server text frame) and `B` (a binary frame of s16le audio, split
/// anywhere). The audio decodes to exactly the bytes received, two per sample.
pub fn aura(data: &[u8]) {
    let (mut carry, mut tally) = (parsers::PcmCarry::default(), Tally::default());
    for (kind, body) in records(data) {
        match kind {
            b'T' => {
                if let Some(text) = crate::text(body) {
                    let _ = parsers::aura_message(text);
                }
            }
            b'B' => tally.add(body.len(), carry.from_le_bytes(body).len()),
            _ => {}
        }
    }
    tally.check("aura");
}

/// Sarvam TTS: `T` server text frames of one context. Audio decodes to exactly the bytes of its
/// chunks, two per sample.
pub fn sarvam_tts(data: &[u8]) {
    let (mut carry, mut tally) = (parsers::PcmCarry::default(), Tally::default());
    for (kind, body) in records(data) {
        let Some(text) = crate::text(body).filter(|_| kind == b'T') else { continue };
        match parsers::sarvam_tts_message(text) {
            Some(SarvamTtsIncoming::Audio(b64)) => {
                if let (Some(bytes), Ok(pcm)) = (decoded_len(Some(&b64)), carry.from_base64(&b64)) {
                    tally.add(bytes, pcm.len());
                }
            }
            Some(SarvamTtsIncoming::Error(_)) => break,
            Some(SarvamTtsIncoming::Final) | None => {}
        }
    }
    tally.check("sarvam tts");
}
