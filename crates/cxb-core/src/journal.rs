//! The call journal: what a live call journals ([`cxb_delivery::journal`] does the writing), and
//! how the next start turns the journal of a call that never finished into its result.
//!
//! Each call writes `{data_dir}/journal/<uuid>.jsonl`: a header with the call's identity (from
//! the config and the link: session, bot, webhook, stream, caller, DID, direction, connected
//! event, transport, start time, sample rate, recording key), then one line per transcript line
//! and per event, in the payload's own shapes. The driver appends what is new after every wake-up
//! that produced something and commits at once, so the journal is synced at every turn boundary
//! and every event; frames never reach it. The journal is deleted once the call's result is
//! persisted (staged, or delivered).
//!
//! At start ([`recover`]) every journal left behind is either removed — its session's result is
//! already persisted (staged, in the outbox, or a local result file), so a second, different
//! payload must not be made — or turned into a result: `disconnected_by` `error`, the journaled
//! transcript and events, a `worker_crashed` event, and the recording (repaired from its `.part`
//! by [`crate::recordings::recover_partial`] before this runs) as `recording_key` /
//! `recording_url`. That result goes through the outbox like any other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cxb_delivery::journal::{self, JournalError, JournalWriter};
use cxb_engine::{CallRecord, TranscriptLine};
use cxb_transports::CallMeta;
use cxb_wire::result::{CallEvent, CallResultsPayload, DisconnectedBy, Speaker};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{error, info, warn};

use crate::app::AppState;
use crate::delivery::Delivered;
use crate::recordings::recorded_secs;
use crate::results::{build_payload, engine_event, rfc3339, round3, CallSummary};

/// Journals live here, under the data dir.
pub const JOURNAL_DIR: &str = "journal";

pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(JOURNAL_DIR)
}

/// The journal's first line: everything the result needs that is not a transcript line or an
/// event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallHeader {
    pub session_id: String,
    pub bot_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    pub transport: String,
    /// Stream, caller, DID, direction, sample rate and the `connected` event, as the link saw
    /// them.
    #[serde(flatten)]
    pub meta: CallMeta,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
}

/// One journal line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum CallLine {
    /// A transcript line, offset in seconds since the call started.
    Line {
        speaker: Speaker,
        text: String,
        offset_seconds: f64,
        #[serde(default)]
        interrupted: bool,
    },
    /// An event, in the payload's shape.
    Event(CallEvent),
}

/// The writing side, owned by the call's driver. Off (no writer) when the journal could not be
/// created: the call goes on without a crash guard.
#[derive(Default)]
pub struct CallJournal {
    writer: Option<JournalWriter>,
    /// How much of the engine's transcript and events, and of the driver's events, is journaled.
    lines: usize,
    engine_events: usize,
    driver_events: usize,
}

impl CallJournal {
    /// Creates the call's journal with its header on disk (synced).
    pub async fn open(data_dir: &Path, header: CallHeader) -> CallJournal {
        let name = format!("{}.{}", uuid::Uuid::new_v4(), journal::JOURNAL_EXT);
        match JournalWriter::create(&journal_dir(data_dir), &name, &header).await {
            Ok(writer) => CallJournal { writer: Some(writer), ..CallJournal::default() },
            Err(e) => {
                error!(error = %e, "cannot journal this call; a crash would lose its result");
                CallJournal::default()
            }
        }
    }

    /// Journals what the call added since the last time (new transcript lines, engine events,
    /// driver events) and commits it. Cheap when nothing is new: three length comparisons.
    pub fn progress(&mut self, record: &CallRecord, driver_events: &[CallEvent], started_at: DateTime<Utc>) {
        let Some(w) = &self.writer else { return };
        let (lines, engine, driver) = (
            record.transcript.get(self.lines..).unwrap_or_default(),
            record.events.get(self.engine_events..).unwrap_or_default(),
            driver_events.get(self.driver_events..).unwrap_or_default(),
        );
        if lines.is_empty() && engine.is_empty() && driver.is_empty() {
            return;
        }
        for l in lines {
            w.append(&CallLine::Line {
                speaker: l.speaker,
                text: l.text.clone(),
                offset_seconds: round3(l.at.as_secs_f64()),
                interrupted: l.interrupted,
            });
        }
        for e in engine {
            w.append(&CallLine::Event(engine_event(started_at, e)));
        }
        for e in driver {
            w.append(&CallLine::Event(e.clone()));
        }
        w.commit();
        (self.lines, self.engine_events, self.driver_events) =
            (record.transcript.len(), record.events.len(), driver_events.len());
    }

    /// The call's result is persisted: the journal has done its job.
    pub async fn close(self) {
        if let Some(w) = self.writer {
            let path = w.path().to_path_buf();
            if let Err(e) = w.remove().await {
                // Harmless: the next start sees the persisted result and removes it.
                warn!(error = %e, path = %path.display(), "could not remove the call journal");
            }
        }
    }
}

/// At start, before the outbox delivers anything: turn every journal of a call that did not
/// finish into its result. Returns how many results were made.
pub async fn recover(app: &AppState) -> usize {
    let data_dir = app.settings.data_dir.clone();
    let dir = journal_dir(&data_dir);
    let paths = tokio::task::spawn_blocking(move || journal::list_journals(&dir)).await.unwrap_or_default();
    if paths.is_empty() {
        return 0;
    }
    let persisted = app.delivery.outbox().keys(crate::delivery::RESULT_KIND);
    let mut recovered = 0;
    for path in paths {
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || journal::read_journal::<CallHeader, CallLine>(&path)).await
        };
        let j = match read {
            Ok(Ok(j)) => j,
            Ok(Err(JournalError::Empty(_))) => {
                // Killed while creating it: the header never reached the disk, the call had not
                // started talking, and there is nothing to say who it was.
                warn!(path = %path.display(), "removing an empty call journal");
                let _ = journal::remove_journal(&path);
                continue;
            }
            Ok(Err(e)) => {
                error!(error = %e, "unreadable call journal set aside for an operator");
                if let Err(e) = journal::set_aside(&path) {
                    error!(error = %e, "could not set the journal aside");
                }
                continue;
            }
            Err(e) => {
                error!(error = %e, path = %path.display(), "journal reader task failed");
                continue;
            }
        };
        let session = j.header.session_id.clone();
        if persisted.contains(&session) || app.delivery.is_persisted(&session) {
            info!(%session, "call journal of a result already persisted; removed");
            let _ = journal::remove_journal(&path);
            continue;
        }
        let payload = recovered_payload(&j, &data_dir);
        warn!(
            %session,
            lines = payload.transcript.len(),
            events = payload.events.len(),
            skipped_lines = j.skipped_lines,
            torn_tail = j.torn_tail,
            recording = payload.recording_key.is_some(),
            "delivering the result of a call the worker died in"
        );
        match app.delivery.deliver(payload, j.header.webhook_url.clone()).await {
            Delivered::Lost => {
                error!(%session, "the recovered result could not be persisted; the journal stays for the next start")
            }
            _ => {
                metrics::counter!("cxb_calls_recovered_total").increment(1);
                recovered += 1;
                if let Err(e) = journal::remove_journal(&path) {
                    warn!(error = %e, "could not remove a recovered call journal");
                }
            }
        }
    }
    recovered
}

/// Longest offset a journal line may claim (a day; calls end long before). A torn or corrupt
/// line can hold any number: beyond this, or not a number, it would move the crash before the
/// events it follows.
const MAX_JOURNAL_OFFSET_SECS: f64 = 86_400.0;

fn sane_offset(offset_seconds: f64) -> f64 {
    if offset_seconds.is_finite() {
        offset_seconds.clamp(0.0, MAX_JOURNAL_OFFSET_SECS)
    } else {
        0.0
    }
}

/// The result of a call that ended with the worker: what its journal holds, as `error`.
pub fn recovered_payload(j: &journal::Journal<CallHeader, CallLine>, data_dir: &Path) -> CallResultsPayload {
    let h = &j.header;
    let mut transcript = Vec::new();
    let mut events = Vec::new();
    let mut last = 0.0_f64;
    for line in &j.records {
        match line {
            CallLine::Line { speaker, text, offset_seconds, interrupted } => {
                let offset_seconds = &sane_offset(*offset_seconds);
                let at = Duration::try_from_secs_f64(*offset_seconds).unwrap_or_default();
                transcript.push(TranscriptLine {
                    speaker: *speaker,
                    text: text.clone(),
                    at,
                    interrupted: *interrupted,
                });
                last = last.max(*offset_seconds);
            }
            CallLine::Event(e) => {
                let mut e = e.clone();
                e.offset_seconds = sane_offset(e.offset_seconds);
                last = last.max(e.offset_seconds);
                events.push(e);
            }
        }
    }
    // The recording runs until the moment the worker died: a better end than the last line.
    let recording = h.recording_key.as_deref().and_then(|key| {
        let wav = cxb_delivery::storage::recording_path(data_dir, key)?;
        let bytes = std::fs::metadata(&wav).ok()?.len();
        Some((key.to_string(), bytes))
    });
    let audio_secs = recording.as_ref().map_or(0.0, |(_, bytes)| recorded_secs(*bytes, h.meta.sample_rate));
    let duration = Duration::try_from_secs_f64(last.max(audio_secs)).unwrap_or_default();
    events.push(CallEvent {
        kind: "worker_crashed".into(),
        timestamp: rfc3339(h.started_at, duration),
        offset_seconds: round3(duration.as_secs_f64()),
        data: json!({"journal_records": j.records.len(), "skipped_lines": j.skipped_lines, "torn_tail": j.torn_tail})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    });
    let summary =
        CallSummary::new(h.session_id.clone(), &h.bot_id, "", &h.meta, h.started_at, duration, DisconnectedBy::Error);
    let record = CallRecord { transcript, ..CallRecord::default() };
    let mut payload = build_payload(&summary, Some(&record), events);
    payload.transport = Some(h.transport.clone()).filter(|t| !t.is_empty());
    // The usage counters died with the worker; none is better than zeros.
    payload.usage_metrics = None;
    if let Some((key, _)) = recording {
        payload.recording_key = Some(key);
        payload.recording_url = h.recording_url.clone();
    }
    payload
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn header(recording_key: Option<&str>) -> CallHeader {
        CallHeader {
            session_id: "sess-1".into(),
            bot_id: "demo".into(),
            webhook_url: Some("http://api/call-results".into()),
            transport: "websocket".into(),
            meta: CallMeta {
                stream_id: "st-1".into(),
                caller_id: "+911".into(),
                did: "+912".into(),
                call_direction: "inbound".into(),
                sample_rate: 8000,
                connected_event: json!({"event":"connected","streamId":"st-1"}).as_object().cloned().unwrap(),
            },
            started_at: "2025-01-02T03:04:05Z".parse().unwrap(),
            recording_key: recording_key.map(str::to_string),
            recording_url: recording_key.map(|k| format!("http://worker/{k}")),
        }
    }

    fn event(kind: &str, offset: f64) -> CallEvent {
        CallEvent {
            kind: kind.into(),
            timestamp: "2025-01-02T03:04:06Z".into(),
            offset_seconds: offset,
            data: Map::new(),
        }
    }

    async fn journal_with(dir: &Path, h: CallHeader, record: &CallRecord, driver: &[CallEvent]) -> PathBuf {
        let mut j = CallJournal::open(dir, h.clone()).await;
        j.progress(record, driver, h.started_at);
        let w = j.writer.as_ref().expect("journal opened");
        w.flushed().await;
        w.path().to_path_buf()
    }

    #[tokio::test]
    async fn a_journal_becomes_an_error_result_with_its_transcript_events_and_recording() {
        let dir = tempfile::tempdir().unwrap();
        let key = "recordings/2025/01/02/sess-1.wav";
        let wav = dir.path().join(key);
        std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
        // 12.5 s of 8 kHz stereo audio behind the header.
        std::fs::write(&wav, vec![0u8; 44 + 8000 * 4 * 25 / 2]).unwrap();
        let mut record = CallRecord::default();
        record.transcript.push(TranscriptLine {
            speaker: Speaker::Bot,
            text: "Hello!".into(),
            at: Duration::from_millis(300),
            interrupted: false,
        });
        record.transcript.push(TranscriptLine {
            speaker: Speaker::Customer,
            text: "I want my order".into(),
            at: Duration::from_millis(4200),
            interrupted: false,
        });
        let path = journal_with(dir.path(), header(Some(key)), &record, &[event("call_answered", 0.1)]).await;
        let j = journal::read_journal::<CallHeader, CallLine>(&path).unwrap();
        let p = recovered_payload(&j, dir.path());
        assert_eq!(p.session_id, "sess-1");
        assert_eq!(p.disconnected_by, Some(DisconnectedBy::Error));
        assert_eq!(p.transport.as_deref(), Some("websocket"));
        assert_eq!(p.stream_id.as_deref(), Some("st-1"));
        assert_eq!(p.transcript.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["Hello!", "I want my order"]);
        assert_eq!(p.transcript[1].offset_seconds, 4.2);
        let kinds: Vec<&str> = p.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["call_answered", "worker_crashed"]);
        assert_eq!(p.call_duration_seconds, 12.5, "the recording's length, past the last line");
        assert_eq!(p.recording_key.as_deref(), Some(key));
        assert_eq!(p.recording_url.as_deref(), Some("http://worker/recordings/2025/01/02/sess-1.wav"));
        assert!(p.usage_metrics.is_none());
        assert_eq!(p.ended_at.as_deref(), Some("2025-01-02T03:04:17.500Z"));
    }

    #[test]
    fn a_journal_started_at_the_last_representable_instant_recovers_without_panicking() {
        // The header comes from disk: its start may be the last instant chrono holds, and the
        // end instant must not overflow it.
        let mut h = header(None);
        h.started_at = DateTime::<Utc>::MAX_UTC;
        let j = journal::Journal {
            path: PathBuf::from("max.jsonl"),
            header: h,
            records: vec![CallLine::Event(event("call_answered", 1.0e9))],
            skipped_lines: 0,
            torn_tail: false,
        };
        let p = recovered_payload(&j, Path::new("/nonexistent"));
        assert_eq!(p.disconnected_by, Some(DisconnectedBy::Error));
        assert_eq!(p.events.last().map(|e| e.kind.as_str()), Some("worker_crashed"));
    }

    #[tokio::test]
    async fn progress_journals_only_what_is_new_and_a_missing_recording_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let h = header(Some("recordings/2025/01/02/gone.wav"));
        let mut j = CallJournal::open(dir.path(), h.clone()).await;
        let mut record = CallRecord::default();
        let mut driver = vec![event("call_answered", 0.0)];
        j.progress(&record, &driver, h.started_at);
        record.transcript.push(TranscriptLine {
            speaker: Speaker::Customer,
            text: "hi".into(),
            at: Duration::from_secs(2),
            interrupted: false,
        });
        j.progress(&record, &driver, h.started_at);
        j.progress(&record, &driver, h.started_at);
        driver.push(event("protocol_error", 3.0));
        j.progress(&record, &driver, h.started_at);
        let w = j.writer.as_ref().unwrap();
        w.flushed().await;
        let read = journal::read_journal::<CallHeader, CallLine>(w.path()).unwrap();
        assert_eq!(read.records.len(), 3, "{:?}", read.records);
        let p = recovered_payload(&read, dir.path());
        assert!(p.recording_key.is_none() && p.recording_url.is_none());
        assert_eq!(p.call_duration_seconds, 3.0);
        let path = w.path().to_path_buf();
        j.close().await;
        assert!(!path.exists(), "closed once the result is persisted");
    }
}
