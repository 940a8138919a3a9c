//! Bot-audio playout: 20 ms frames released in real time (paced by [`cxb_audio::pacing::Pacer`]),
//! and what happens once an utterance has played — the transcript line, the playback mark, a
//! hang-up or transfer that waited for it.

use std::time::Duration;

use cxb_wire::result::Speaker;

use crate::timer::Timer;
use crate::transfer::TransferState;
use crate::utterance::UtteranceKind;
use crate::{ms, Action, Conversation, TranscriptLine};

impl Conversation {
    /// Release every frame that is due, then settle finished utterances.
    pub(crate) fn pump(&mut self, now: Duration) {
        if self.ended.is_some() {
            return;
        }
        let frame = self.cfg.frame_samples();
        let mut released = false;
        while self.speech.front_has_audio(frame) && self.speech.paused.is_none() {
            if !self.speech.pacer.may_release(now, !released) {
                break;
            }
            released = true;
            let u = self.speech.queue.front_mut().expect("front_has_audio");
            let take = frame.min(u.audio.len());
            let mut out: Vec<i16> = u.audio.drain(..take).collect();
            out.resize(frame, 0);
            u.sent += take;
            if u.first_audio_at.is_none() {
                u.first_audio_at = Some(now);
                let (kind, sample) = (u.kind, u.latency_sample.take());
                if kind == UtteranceKind::Opening {
                    self.speech.opening_started_at = Some(now);
                }
                if let Some(i) = sample {
                    if let Some((idx, speech_end)) = self.pending_speech_end.take().filter(|(idx, _)| *idx == i) {
                        self.record.latency[idx].total_response_ms = Some(ms(now.saturating_sub(speech_end)));
                    }
                }
            }
            self.speech.pacer.released(frame);
            self.actions.push_back(Action::PlayAudio { frame: out });
        }
        self.after_playout_change(now);
        let next = (self.ended.is_none() && self.speech.front_has_audio(frame) && self.speech.paused.is_none())
            .then(|| self.speech.pacer.next_release_at());
        self.timers.put(Timer::Playout, next);
    }

    /// Retire utterances that finished playing; end the call or transfer it when that waited
    /// for the last word to be heard.
    pub(crate) fn after_playout_change(&mut self, now: Duration) {
        self.timers.clear(Timer::AfterPlayout);
        let mut retired = false;
        while let Some(front) = self.speech.queue.front_mut() {
            if !front.finished_playing() {
                break;
            }
            if front.sent > 0 && !front.done_signalled {
                front.done_signalled = true;
                let utterance = front.id;
                self.actions.push_back(Action::UtteranceDone { utterance });
            }
            // Played in full — but the tail is only heard once real time catches up.
            if self.speech.pacer.samples_ahead(now) > 0 && self.speech.queue.len() == 1 && self.acts_after_speech() {
                self.timers.put(Timer::AfterPlayout, self.speech.pacer.heard_until());
                break;
            }
            let u = self.speech.queue.pop_front().expect("front exists");
            retired = true;
            if u.kind == UtteranceKind::Opening {
                self.speech.opening_started_at = None;
            }
            if !u.text.is_empty() && u.sent > 0 {
                self.record.transcript.push(TranscriptLine {
                    speaker: Speaker::Bot,
                    text: u.text,
                    at: u.first_audio_at.unwrap_or(now),
                    interrupted: false,
                });
            }
        }
        if retired {
            self.arm_tts_timer();
        }
        if self.speech.queue.is_empty() {
            self.speech.pacer.stop();
            if self.llm.is_none() && self.tool_round.is_none() {
                if let Some(reason) = self.end_after_speech.take() {
                    self.end(now, reason, true);
                    return;
                }
            }
            self.transfer_when_announced(now);
        }
    }

    /// Something (hang-up, transfer) must wait until the caller has heard the last word.
    fn acts_after_speech(&self) -> bool {
        self.end_after_speech.is_some() || matches!(self.transfer, TransferState::Announcing { .. })
    }
}
