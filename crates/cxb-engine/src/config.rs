//! Per-call engine settings, resolved by the driver from the bot config and worker defaults.

use std::collections::HashMap;
use std::time::Duration;

use cxb_wire::config::DEFAULT_END_CALL_MESSAGE;
use cxb_wire::transfer::TransferChoices;
use serde_json::Value;

use crate::behaviour::{self, PhraseSet};

/// Silence re-engagement: after `after` of caller silence say the next prompt, up to
/// `max_attempts` times, before the RNR / dead-air rules apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ReEngagementRule {
    pub after: Duration,
    pub max_attempts: u32,
    pub messages: Vec<String>,
}

/// What `transfer_call` may reach on this call (contract §4.4 inputs).
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// The targets the call's transport can reach: the driver filters them
    /// ([`TransferChoices::for_transport`]); the engine only chooses among them.
    pub choices: TransferChoices,
    pub pre_transfer_message: String,
}

/// A custom tool's own timing: its timeout and a message spoken if it runs long.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTiming {
    pub timeout: Duration,
    pub pre_message: Option<(String, Duration)>,
}

/// Per-call engine settings, resolved from the bot config and worker defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Transport sample rate; bot audio frames are 20 ms at this rate.
    pub sample_rate: u32,
    pub system_prompt: String,
    pub opening_message: String,
    /// Custom tools from the bot config (OpenAI function format).
    pub custom_tools: Vec<Value>,
    /// Minimum caller words that interrupt the bot (0 or 1: any word interrupts).
    pub min_words_interruption: u32,
    pub max_call_duration: Duration,
    /// The opening message cannot be interrupted during its first `opening_guard` of playout,
    /// so line noise at pick-up does not cut the greeting.
    pub opening_guard: Duration,
    /// How far ahead of real time bot audio is released to the transport.
    pub playout_lead: Duration,
    /// Frames released together once a spurt is under way (at least 1). Two halves the writes
    /// and wake-ups per second of bot speech; the caller's buffer then swings between
    /// `playout_lead` and `playout_lead` plus one frame less `batch` frames.
    pub playout_batch: u32,
    /// After VAD says the caller stopped, how long to wait for the STT final before closing the
    /// turn with what we have (or dropping it as noise).
    pub stt_final_wait: Duration,
    pub llm_first_token_timeout: Duration,
    pub tts_first_audio_timeout: Duration,
    pub tool_timeout: Duration,
    /// The VAD's end-of-speech hangover: `SpeechStopped` arrives this long after the caller's
    /// last voiced frame. Response latency is measured from the real end of speech.
    pub vad_stop_hangover: Duration,
    /// Caller words that never interrupt the bot while it holds the floor.
    pub backchannels: PhraseSet,
    /// Caller phrases that interrupt at once, past the word minimum and the opening guard.
    pub high_intent: PhraseSet,
    /// Bot phrases that end the call once played.
    pub closure_phrases: PhraseSet,
    /// Pause bot audio as soon as VAD hears the caller; resume if no words follow within
    /// `false_interruption_timeout`.
    pub pause_on_speech: bool,
    pub false_interruption_timeout: Duration,
    /// Extra wait before closing a turn that looks mid-number or mid-e-mail.
    pub unfinished_wait: Duration,
    pub re_engagement: Option<ReEngagementRule>,
    /// Caller silent since the call started, this long after the bot stopped → `RNR`.
    pub rnr_timeout: Duration,
    /// Caller silent (after having spoken) this long → the bot ends the call.
    pub dead_air_timeout: Duration,
    pub dead_air_message: String,
    /// Offer `detected_voicemail`.
    pub voicemail_detection: bool,
    pub voicemail_message: String,
    /// Spoken before the hang-up when `end_call` brought no goodbye and the follow-up request
    /// for one failed, timed out or came back empty.
    pub end_call_message: String,
    /// Offer `transfer_call` (None: the transport cannot transfer or nothing is configured).
    pub transfer: Option<TransferOptions>,
    /// How long the transport may take to confirm a transfer.
    pub transfer_timeout: Duration,
    /// After a transfer, how long to wait for the transport to drop the leg before leaving.
    pub transfer_hold: Duration,
    /// Filler phrases (in turn) when the LLM or a tool is slow; empty: none.
    pub filler_phrases: Vec<String>,
    pub filler_after: Duration,
    /// Per custom tool timeout and pre-message.
    pub tool_timings: HashMap<String, ToolTiming>,
    /// Offer `send_dtmf` (in-band tones).
    pub dtmf_send: bool,
    /// Keypresses become a caller turn after this long without another key (or on `#`).
    pub dtmf_input_timeout: Duration,
    /// Smart-turn mode: at VAD stop, ask a turn model ([`Action::PredictTurn`]) and close the turn
    /// only when it says complete — or after this long at most.
    pub turn_model_max_wait: Option<Duration>,
}

impl EngineConfig {
    /// Defaults for everything but the bot's texts.
    pub fn new(sample_rate: u32, system_prompt: String, opening_message: String) -> Self {
        Self {
            sample_rate,
            system_prompt,
            opening_message,
            custom_tools: Vec::new(),
            min_words_interruption: 3,
            max_call_duration: Duration::from_secs(600),
            opening_guard: Duration::from_millis(1000),
            playout_lead: Duration::from_millis(60),
            playout_batch: 1,
            stt_final_wait: Duration::from_millis(1000),
            llm_first_token_timeout: Duration::from_secs(10),
            tts_first_audio_timeout: Duration::from_secs(8),
            tool_timeout: Duration::from_secs(15),
            vad_stop_hangover: Duration::ZERO,
            backchannels: PhraseSet::new(behaviour::DEFAULT_BACKCHANNELS),
            high_intent: PhraseSet::new(behaviour::DEFAULT_HIGH_INTENT),
            closure_phrases: PhraseSet::new(behaviour::DEFAULT_CLOSURE_PHRASES),
            pause_on_speech: false,
            false_interruption_timeout: Duration::from_millis(800),
            unfinished_wait: Duration::from_millis(1500),
            re_engagement: None,
            rnr_timeout: Duration::from_secs(15),
            dead_air_timeout: Duration::from_secs(20),
            dead_air_message: String::new(),
            voicemail_detection: true,
            voicemail_message: String::new(),
            end_call_message: DEFAULT_END_CALL_MESSAGE.into(),
            transfer: None,
            transfer_timeout: Duration::from_secs(10),
            transfer_hold: Duration::from_secs(60),
            filler_phrases: Vec::new(),
            filler_after: Duration::from_millis(1500),
            tool_timings: HashMap::new(),
            dtmf_send: false,
            dtmf_input_timeout: Duration::from_secs(2),
            turn_model_max_wait: None,
        }
    }

    /// Samples in one 20 ms frame of bot audio (at least one, whatever the rate).
    pub(crate) fn frame_samples(&self) -> usize {
        cxb_audio::frame_len(self.sample_rate).max(1)
    }
}
