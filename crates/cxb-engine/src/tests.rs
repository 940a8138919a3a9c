//! Scenario tests with simulated time and scripted providers.

use super::*;
use std::collections::{BTreeMap, VecDeque};

use cxb_wire::config::TransferTarget;
use cxb_wire::llm::{ToolCall, Usage};
use cxb_wire::result::Speaker;

const RATE: u32 = 8000;

/// Scripted providers around the engine: TTS makes 60 ms of audio per character after a
/// delay; the LLM answers by script after a delay. Everything is deterministic.
struct Sim {
    conv: Conversation,
    now: Duration,
    scheduled: BTreeMap<(Duration, u64), Input>,
    seq: u64,
    log: Vec<(Duration, Action)>,
    tts_delay: Duration,
    llm_delay: Duration,
    /// Reply per LLM request, in order; `None` = stall.
    llm_script: VecDeque<Option<Reply>>,
    tts_stall: bool,
    /// How the transport answers a transfer: `None` = never.
    transfer_reply: Option<Result<(), String>>,
    /// Custom tools answer after this delay with this content; `None` = never.
    tool_reply: Option<(Duration, &'static str)>,
}

#[derive(Clone)]
struct Reply {
    text: &'static str,
    tools: Vec<(&'static str, &'static str)>,
}

fn say(text: &'static str) -> Option<Reply> {
    Some(Reply { text, tools: vec![] })
}

fn cfg() -> EngineConfig {
    EngineConfig::new(RATE, "You are a test bot.".into(), "Hello, this is the test line.".into())
}

impl Sim {
    fn new(cfg: EngineConfig) -> Self {
        Self {
            conv: Conversation::new(cfg),
            now: Duration::ZERO,
            scheduled: BTreeMap::new(),
            seq: 0,
            log: vec![],
            tts_delay: Duration::from_millis(100),
            llm_delay: Duration::from_millis(200),
            llm_script: VecDeque::new(),
            tts_stall: false,
            transfer_reply: Some(Ok(())),
            tool_reply: None,
        }
    }

    fn at(&mut self, t: Duration, input: Input) {
        self.seq += 1;
        self.scheduled.insert((t, self.seq), input);
    }

    fn input(&mut self, input: Input) {
        self.conv.handle(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(a) = self.conv.poll_action() {
            self.react(&a);
            self.log.push((self.now, a));
        }
    }

    fn react(&mut self, a: &Action) {
        match a {
            Action::Speak { utterance, text } if !self.tts_stall => {
                let samples = text.chars().count() * (RATE as usize * 60 / 1000);
                let t = self.now + self.tts_delay;
                self.at(t, Input::TtsAudio { utterance: *utterance, pcm: vec![1000; samples] });
            }
            Action::FlushSpeech { utterance } if !self.tts_stall => {
                let t = self.now + self.tts_delay + Duration::from_millis(1);
                self.at(t, Input::TtsDone { utterance: *utterance });
            }
            Action::StartLlm { turn, .. } => {
                if let Some(Some(reply)) = self.llm_script.pop_front() {
                    let mut t = self.now + self.llm_delay;
                    for w in reply.text.split_inclusive(' ') {
                        self.at(t, Input::LlmToken { turn: *turn, text: w.to_string() });
                        t += Duration::from_millis(5);
                    }
                    if !reply.tools.is_empty() {
                        let calls = reply
                            .tools
                            .iter()
                            .enumerate()
                            .map(|(i, (n, a))| ToolCall {
                                id: format!("call_{turn}_{i}"),
                                name: n.to_string(),
                                arguments: a.to_string(),
                                thought_signature: None,
                            })
                            .collect();
                        self.at(t, Input::LlmToolCalls { turn: *turn, calls });
                    }
                    let usage = Usage {
                        prompt_tokens: 100,
                        completion_tokens: 10,
                        total_tokens: 110,
                        cached_tokens: 64,
                        cache_write_tokens: 0,
                        thoughts_tokens: 0,
                    };
                    self.at(t, Input::LlmDone { turn: *turn, usage: Some(usage) });
                }
            }
            Action::Transfer { .. } => {
                if let Some(r) = self.transfer_reply.clone() {
                    let t = self.now + Duration::from_millis(50);
                    self.at(t, Input::TransferResult { ok: r.is_ok(), error: r.err() });
                }
            }
            Action::RunTool { call_id, .. } => {
                if let Some((delay, content)) = self.tool_reply {
                    let t = self.now + delay;
                    self.at(
                        t,
                        Input::ToolResult { call_id: call_id.clone(), content: content.into(), is_error: false },
                    );
                }
            }
            _ => {}
        }
    }

    /// Run simulated time forward, interleaving scheduled inputs and engine timers.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next_input = self.scheduled.keys().next().map(|k| k.0).filter(|t| *t <= target);
            let next_timer = self.conv.poll_timeout().filter(|t| *t <= target);
            match (next_input, next_timer) {
                (Some(ti), Some(tt)) if tt < ti => self.fire_timer(tt),
                (Some(ti), _) => {
                    self.now = self.now.max(ti);
                    let key = *self.scheduled.keys().next().unwrap();
                    let input = self.scheduled.remove(&key).unwrap();
                    self.input(input);
                }
                (None, Some(tt)) => self.fire_timer(tt),
                (None, None) => break,
            }
        }
        self.now = target;
    }

    fn fire_timer(&mut self, t: Duration) {
        self.now = self.now.max(t);
        self.conv.handle_timeout(self.now);
        self.drain();
    }

    /// The caller says `text` over `speech` ms: VAD start, interims, final, VAD stop after 500 ms.
    fn caller_says(&mut self, text: &'static str, speech_ms: u64) {
        let start = self.now;
        self.at(start, Input::SpeechStarted);
        let words: Vec<&str> = text.split_whitespace().collect();
        let step = speech_ms / (words.len() as u64 + 1);
        for k in 1..=words.len() {
            let t = start + Duration::from_millis(step * k as u64);
            self.at(t, Input::Transcript { text: words[..k].join(" "), is_final: false, speech_final: false });
        }
        let end = start + Duration::from_millis(speech_ms);
        self.at(
            end + Duration::from_millis(250),
            Input::Transcript { text: text.into(), is_final: true, speech_final: true },
        );
        self.at(end + Duration::from_millis(500), Input::SpeechStopped);
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|(_, a)| f(a)).count()
    }

    fn first_time(&self, f: impl Fn(&Action) -> bool) -> Option<Duration> {
        self.log.iter().find(|(_, a)| f(a)).map(|(t, _)| *t)
    }

    fn ended(&self) -> Option<(DisconnectedBy, bool)> {
        self.log.iter().find_map(|(_, a)| match a {
            Action::End { disconnected_by, hang_up } => Some((*disconnected_by, *hang_up)),
            _ => None,
        })
    }

    /// When each LLM request went out, and its turn.
    fn llm_starts(&self) -> Vec<(Duration, u64)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::StartLlm { turn, .. } => Some((*t, *turn)),
                _ => None,
            })
            .collect()
    }

    fn transcript(&self) -> Vec<(Speaker, String, bool)> {
        let mut t = self.conv.record().transcript.clone();
        t.sort_by_key(|l| l.at);
        t.into_iter().map(|l| (l.speaker, l.text, l.interrupted)).collect()
    }
}

fn is_play(a: &Action) -> bool {
    matches!(a, Action::PlayAudio { .. })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn opening_message_is_spoken_first_and_paced_in_real_time() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    assert!(matches!(&sim.log[0].1, Action::Speak { text, .. } if text == "Hello, this is the test line."));
    sim.advance(secs(5.0));
    let frames: Vec<Duration> = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).collect();
    // 29 chars * 60 ms = 1.74 s = 87 frames.
    assert_eq!(frames.len(), 87);
    assert_eq!(frames[0], secs(0.1), "first frame as soon as TTS answers");
    // Real-time pacing with a 60 ms lead: frame k is released at t0 + 20k ms - 60 ms.
    for (k, t) in frames.iter().enumerate().skip(4) {
        let expected = secs(0.1) + Duration::from_millis(20 * k as u64) - Duration::from_millis(60);
        assert_eq!(*t, expected, "frame {k}");
    }
    for (_, a) in &sim.log {
        if let Action::PlayAudio { frame } = a {
            assert_eq!(frame.len(), 160);
        }
    }
    assert_eq!(sim.transcript(), vec![(Speaker::Bot, "Hello, this is the test line.".into(), false)]);
}

#[test]
fn batched_playout_releases_frames_in_pairs_and_keeps_the_lead() {
    let mut c = cfg();
    c.playout_lead = Duration::from_millis(80);
    c.playout_batch = 2;
    let mut sim = Sim::new(c);
    sim.input(Input::Start);
    sim.advance(secs(5.0));
    let frames: Vec<Duration> = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).collect();
    assert_eq!(frames.len(), 87, "every frame still goes out");
    let t0 = secs(0.1);
    // The spurt opens with its 80 ms lead at once (frames 0..=4 cover 0-100 ms of audio).
    assert!(frames[..5].iter().all(|t| *t == t0), "{:?}", &frames[..6]);
    // Then two frames per release: k and k+1 leave together once k+1 is due (t0 + 20(k+1) - 80 ms).
    for (k, t) in frames.iter().enumerate().skip(5) {
        let pair_last = if k % 2 == 1 { k + 1 } else { k };
        let expected = (t0 + Duration::from_millis(20 * pair_last as u64)).saturating_sub(Duration::from_millis(80));
        assert_eq!(*t, expected.min(secs(5.0)), "frame {k}");
        // Never behind real time, never more than lead + one frame ahead of it.
        let plays_at = t0 + Duration::from_millis(20 * k as u64);
        assert!(plays_at >= *t + Duration::from_millis(60) && plays_at <= *t + Duration::from_millis(100), "frame {k}");
    }
    let releases: std::collections::BTreeSet<Duration> = frames.iter().copied().collect();
    assert!(releases.len() <= 1 + 82 / 2 + 1, "{} release times for 87 frames", releases.len());
}

#[test]
fn a_caller_turn_gets_an_llm_answer_spoken_sentence_by_sentence() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Sure thing, I can help. Your order ships tomorrow morning. "));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1200);
    sim.advance(secs(6.0));
    let speaks: Vec<String> = sim
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Speak { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        speaks,
        vec!["Hello, this is the test line.", "Sure thing, I can help.", "Your order ships tomorrow morning."]
    );
    let start = sim.first_time(|a| matches!(a, Action::StartLlm { .. })).unwrap();
    // The turn closes at VAD stop (final already in hand): speech ended at 4.2 s, stop at 4.7 s.
    assert_eq!(start, secs(4.7));
    let lat = &sim.conv.record().latency[0];
    assert_eq!(lat.stt_final_delay_ms, 0.0);
    assert_eq!(lat.llm_ttft_ms, Some(200.0));
    // First sentence completes 5 tokens later (5 ms each), TTS answers 100 ms after.
    assert_eq!(lat.llm_first_sentence_ms, Some(220.0));
    assert_eq!(lat.total_response_ms, Some(200.0 + 20.0 + 100.0));
    let Action::StartLlm { messages, tools, .. } =
        &sim.log.iter().find(|(_, a)| matches!(a, Action::StartLlm { .. })).unwrap().1
    else {
        unreachable!()
    };
    assert_eq!(messages[0], ChatMessage::System("You are a test bot.".into()));
    assert_eq!(
        messages[1],
        ChatMessage::Assistant { content: Some("Hello, this is the test line.".into()), tool_calls: vec![] }
    );
    assert_eq!(messages[2], ChatMessage::User("where is my order".into()));
    assert!(tools.iter().any(|t| t["function"]["name"] == END_CALL_TOOL));
}

#[test]
fn barge_in_with_enough_words_cancels_clears_and_keeps_only_what_was_heard() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Your order shipped yesterday and should arrive tomorrow before noon at your door. "));
    sim.llm_script.push_back(say("Of course, what is it?"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(3.0));
    // Bot answer started around 4.5 + 0.3 s; 1.2 s into it, the caller barges in.
    let answer_start = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).find(|t| *t > secs(4.0)).unwrap();
    assert!(sim.now > answer_start + secs(1.0));
    let t_barge = sim.now;
    sim.caller_says("wait I have another question", 1500);
    sim.advance(secs(8.0));
    let clear_at = sim.first_time(|a| matches!(a, Action::ClearAudio)).expect("clear sent");
    // Interrupted on the third interim word: 3 * 1500/6 ms after speech start.
    assert_eq!(clear_at, t_barge + Duration::from_millis(750));
    // TTS had already delivered the whole answer, so there was nothing to cancel upstream: the
    // engine dropped its own buffered audio and cleared the transport's.
    assert_eq!(sim.count(|a| matches!(a, Action::CancelSpeech { .. })), 0);
    // No bot audio between the clear and the next answer's first frame.
    let next_llm = sim.log.iter().filter(|(_, a)| matches!(a, Action::StartLlm { .. })).nth(1).unwrap().0;
    assert!(!sim.log.iter().any(|(t, a)| is_play(a) && *t > clear_at && *t < next_llm));
    let transcript = sim.transcript();
    let cut = transcript.iter().find(|l| l.2).expect("an interrupted bot line");
    let full = "Your order shipped yesterday and should arrive tomorrow before noon at your door.";
    assert!(full.starts_with(&cut.1) && cut.1.len() < full.len() && !cut.1.is_empty(), "{cut:?}");
    // The LLM context holds the truncated text, not the full answer.
    let Action::StartLlm { messages, .. } =
        &sim.log.iter().filter(|(_, a)| matches!(a, Action::StartLlm { .. })).nth(1).unwrap().1
    else {
        unreachable!()
    };
    assert_eq!(messages[3], ChatMessage::Assistant { content: Some(cut.1.clone()), tool_calls: vec![] });
    assert_eq!(messages[4], ChatMessage::User("wait I have another question".into()));
}

#[test]
fn short_utterances_do_not_interrupt_and_are_not_turns() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Your order shipped yesterday and should arrive tomorrow before noon at your door. "));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(2.0));
    sim.caller_says("okay sure", 500);
    sim.advance(secs(8.0));
    assert_eq!(sim.count(|a| matches!(a, Action::ClearAudio)), 0);
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 1);
    assert!(sim.transcript().iter().all(|l| !l.2));
}

#[test]
fn the_opening_guard_protects_the_greeting_from_line_noise() {
    let mut c = cfg();
    c.opening_message = "Hello and welcome to the test line, we are glad you called us today.".into();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Sure."));
    sim.input(Input::Start);
    sim.advance(secs(0.3));
    sim.caller_says("hello hello who is this", 500);
    sim.advance(secs(0.6));
    assert_eq!(sim.count(|a| matches!(a, Action::ClearAudio)), 0, "no barge-in inside the guard");
    // After the guard, the same speech interrupts.
    sim.advance(secs(1.0));
    sim.caller_says("hello hello who is this", 800);
    sim.advance(secs(3.0));
    assert_eq!(sim.count(|a| matches!(a, Action::ClearAudio)), 1);
}

#[test]
fn end_call_speaks_the_final_message_then_hangs_up_as_bot() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(Some(Reply {
        text: "",
        tools: vec![("end_call", r#"{"final_message":"Thanks for calling, goodbye!"}"#)],
    }));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("that is all goodbye", 800);
    sim.advance(secs(10.0));
    let (reason, hang_up) = sim.ended().expect("call ended");
    assert_eq!(reason, DisconnectedBy::Bot);
    assert!(hang_up);
    let end_at = sim.first_time(|a| matches!(a, Action::End { .. })).unwrap();
    let last_frame = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).next_back().unwrap();
    // Hang up only after the goodbye has been heard (last frame + its 20 ms + the lead).
    assert!(end_at >= last_frame + Duration::from_millis(20), "{end_at:?} vs {last_frame:?}");
    let t = sim.transcript();
    assert_eq!(t.last().unwrap(), &(Speaker::Bot, "Thanks for calling, goodbye!".to_string(), false));
    assert!(sim.conv.record().events.iter().any(|e| e.kind == "tool_call" && e.data["name"] == "end_call"));
    // The goodbye is spoken when the tool call completes: that is the reply's first text.
    let lat = &sim.conv.record().latency[0];
    assert!(lat.llm_first_sentence_ms.is_some_and(|f| f >= lat.llm_ttft_ms.unwrap()), "{lat:?}");
}

#[test]
fn customer_hangup_ends_without_a_hangup_primitive() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(0.5));
    sim.input(Input::CustomerHangup);
    assert_eq!(sim.ended(), Some((DisconnectedBy::Customer, false)));
    // The greeting was cut: only the heard part is in the transcript, marked interrupted.
    let t = sim.transcript();
    assert_eq!(t.len(), 1);
    assert!(t[0].2);
    sim.input(Input::CustomerHangup);
    sim.advance(secs(5.0));
    assert_eq!(sim.count(|a| matches!(a, Action::End { .. })), 1, "exactly one end");
}

#[test]
fn max_call_duration_ends_the_call_as_timeout() {
    let mut c = cfg();
    c.max_call_duration = secs(30.0);
    c.rnr_timeout = Duration::ZERO;
    let mut sim = Sim::new(c);
    sim.input(Input::Start);
    sim.advance(secs(29.9));
    assert!(sim.ended().is_none());
    sim.advance(secs(0.2));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Timeout, true)));
    assert_eq!(sim.first_time(|a| matches!(a, Action::End { .. })), Some(secs(30.0)));
}

#[test]
fn an_llm_that_never_answers_ends_the_call_as_error_with_a_service_error() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(None);
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("hello is anyone there", 800);
    sim.advance(secs(20.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Error, true)));
    let e = sim.conv.record().events.iter().find(|e| e.kind == "service_error").unwrap();
    assert_eq!(e.data["service"], "llm");
}

#[test]
fn a_tts_that_never_answers_ends_the_call_as_error() {
    let mut sim = Sim::new(cfg());
    sim.tts_stall = true;
    sim.input(Input::Start);
    sim.advance(secs(9.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Error, true)));
    assert_eq!(sim.first_time(|a| matches!(a, Action::End { .. })), Some(secs(8.0)));
}

#[test]
fn provider_failure_input_ends_the_call_once() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.input(Input::ServiceFailed { service: Service::Stt, error: "closed 1011".into() });
    sim.input(Input::ServiceFailed { service: Service::Tts, error: "again".into() });
    assert_eq!(sim.count(|a| matches!(a, Action::End { .. })), 1);
    assert_eq!(sim.ended(), Some((DisconnectedBy::Error, true)));
}

#[test]
fn custom_tool_round_trip_feeds_the_result_back_to_the_llm() {
    let mut c = cfg();
    c.custom_tools = vec![
        json!({"type":"function","function":{"name":"lookup_order","parameters":{"type":"object","properties":{}}}}),
    ];
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(Some(Reply {
        text: "Let me check that for you. ",
        tools: vec![("lookup_order", r#"{"id":"42"}"#)],
    }));
    sim.llm_script.push_back(say("It arrives tomorrow."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is order forty two", 1000);
    sim.advance(secs(1.8));
    let (_, Action::RunTool { call_id, name, arguments }) =
        sim.log.iter().find(|(_, a)| matches!(a, Action::RunTool { .. })).unwrap().clone()
    else {
        unreachable!()
    };
    assert_eq!(name, "lookup_order");
    assert_eq!(arguments, r#"{"id":"42"}"#);
    sim.input(Input::ToolResult { call_id: call_id.clone(), content: r#"{"eta":"tomorrow"}"#.into(), is_error: false });
    sim.advance(secs(5.0));
    let Action::StartLlm { messages, .. } =
        &sim.log.iter().filter(|(_, a)| matches!(a, Action::StartLlm { .. })).nth(1).unwrap().1
    else {
        unreachable!()
    };
    let n = messages.len();
    assert!(
        matches!(&messages[n - 2], ChatMessage::Assistant { tool_calls, .. } if tool_calls[0].name == "lookup_order")
    );
    assert_eq!(messages[n - 1], ChatMessage::Tool { tool_call_id: call_id, content: r#"{"eta":"tomorrow"}"#.into() });
    let spoken: Vec<_> = sim.transcript().into_iter().filter(|l| l.0 == Speaker::Bot).map(|l| l.1).collect();
    assert_eq!(spoken, vec!["Hello, this is the test line.", "Let me check that for you.", "It arrives tomorrow."]);
    assert!(sim.conv.record().events.iter().any(|e| e.kind == "custom_tool_result"));
}

#[test]
fn a_tool_that_never_answers_times_out_into_an_error_result_for_the_llm() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"type":"function","function":{"name":"slow","parameters":{}}})];
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(Some(Reply { text: "", tools: vec![("slow", "{}")] }));
    sim.llm_script.push_back(say("Sorry, I could not check that."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("check something for me", 800);
    sim.advance(secs(20.0));
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 2);
    assert!(sim.conv.record().events.iter().any(|e| e.kind == "tool_timeout"));
    assert!(sim.ended().is_none());
}

#[test]
fn vad_stop_without_a_final_asks_stt_to_finalize_and_then_closes() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Okay."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.input(Input::SpeechStarted);
    sim.advance(secs(0.5));
    sim.input(Input::Transcript { text: "my account number".into(), is_final: false, speech_final: false });
    sim.advance(secs(0.5));
    sim.input(Input::SpeechStopped);
    assert_eq!(sim.count(|a| matches!(a, Action::FinalizeStt)), 1);
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 0);
    sim.advance(secs(0.1));
    sim.input(Input::Transcript { text: "my account number is seven".into(), is_final: true, speech_final: false });
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 1);
}

#[test]
fn noise_that_never_becomes_words_is_dropped_after_a_bounded_wait() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.input(Input::SpeechStarted);
    sim.advance(secs(0.4));
    sim.input(Input::SpeechStopped);
    sim.advance(secs(2.0));
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 0);
    // Only the silence clock is left: the noise did not count as the caller speaking, and the
    // clock restarted when it was dropped (at 3.4 + 1.0 s).
    assert_eq!(sim.conv.poll_timeout(), Some(secs(4.4) + sim.conv.cfg.rnr_timeout));
}

#[test]
fn word_count_ignores_punctuation_only_tokens() {
    assert_eq!(word_count("uh - okay , fine"), 3);
    assert_eq!(word_count("  "), 0);
}

#[test]
fn an_older_time_counts_as_the_latest_one() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(None);
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(2.0));
    let (asked, turn) = sim.llm_starts()[0];
    sim.conv.handle_timeout(sim.now);
    // Inputs stamped before the request went out (clock readings that crossed threads).
    sim.conv.handle(asked - secs(1.0), Input::LlmToken { turn, text: "Sure thing. ".into() });
    sim.conv.handle(Duration::ZERO, Input::LlmDone { turn, usage: None });
    sim.drain();
    let ttft = (sim.now - asked).as_secs_f64() * 1000.0;
    assert_eq!(sim.conv.record().latency[0].llm_ttft_ms, Some(ttft), "measured at the latest time seen");
    let speak_id = sim.log.iter().rev().find_map(|(_, a)| match a {
        Action::Speak { utterance, .. } => Some(*utterance),
        _ => None,
    });
    sim.conv.handle(secs(1.0), Input::TtsAudio { utterance: speak_id.unwrap(), pcm: vec![1; 1600] });
    sim.conv.handle_timeout(Duration::ZERO);
    sim.drain();
    assert!(sim.conv.poll_timeout().is_some_and(|t| t >= sim.now), "no timer behind the engine's clock");
    assert!(sim.ended().is_none());
}

mod behaviour_scenarios;
mod goodbye_scenarios;

mod property {
    use super::*;
    use proptest::prelude::*;

    fn arb_input() -> impl Strategy<Value = (i32, Input)> {
        let text =
            prop::sample::select(vec!["", "hi", "wait wait wait", "goodbye now please", "one two three four five"]);
        let turn = 0u64..8;
        prop_oneof![
            Just(Input::SpeechStarted),
            Just(Input::SpeechStopped),
            (text.clone(), any::<bool>(), any::<bool>()).prop_map(|(t, f, s)| Input::Transcript {
                text: t.into(),
                is_final: f,
                speech_final: s
            }),
            Just(Input::UtteranceEnd),
            (turn.clone(), text.clone()).prop_map(|(turn, t)| Input::LlmToken { turn, text: format!("{t}. ") }),
            turn.clone().prop_map(|turn| Input::LlmToolCalls {
                turn,
                calls: vec![ToolCall {
                    id: "c".into(),
                    name: "end_call".into(),
                    arguments: "{".into(),
                    thought_signature: None
                }]
            }),
            turn.clone().prop_map(|turn| Input::LlmDone { turn, usage: None }),
            (turn.clone(), 0usize..4000).prop_map(|(utterance, n)| Input::TtsAudio { utterance, pcm: vec![7; n] }),
            turn.clone().prop_map(|utterance| Input::TtsDone { utterance }),
            Just(Input::ToolResult { call_id: "c".into(), content: "x".into(), is_error: false }),
            Just(Input::CustomerHangup),
            prop::sample::select(vec!["1", "2#", "*", "x"]).prop_map(|d| Input::Dtmf { digits: d.into() }),
            any::<bool>().prop_map(|ok| Input::TransferResult { ok, error: None }),
            turn.clone().prop_map(|utterance| Input::PlaybackConfirmed { utterance }),
            prop::sample::select(vec!["transfer_call", "detected_voicemail", "send_dtmf", "lookup"]).prop_flat_map(
                move |name| (0u64..8).prop_map(move |turn| Input::LlmToolCalls {
                    turn,
                    calls: vec![ToolCall {
                        id: "c".into(),
                        name: name.into(),
                        arguments: r#"{"digits":"1"}"#.into(),
                        thought_signature: None
                    }]
                })
            ),
        ]
        .prop_flat_map(|i| (-1500i32..3000, Just(i)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Any interleaving, with times that sometimes go backwards: no panic, no timer left in
        /// the past, and the call ends exactly once (forced at max duration at the latest).
        #[test]
        fn any_interleaving_ends_exactly_once(inputs in prop::collection::vec(arb_input(), 0..60)) {
            // Every rule switched on, so the interleavings reach them all.
            let mut c = behaviour_scenarios::transfer_cfg();
            c.max_call_duration = secs(120.0);
            c.pause_on_speech = true;
            c.dtmf_send = true;
            c.filler_phrases = vec!["One moment.".into()];
            c.re_engagement = Some(ReEngagementRule { after: secs(1.0), max_attempts: 2, messages: vec!["Hello?".into()] });
            c.custom_tools = vec![json!({"name": "lookup", "parameters": {}})];
            c.tool_timings.insert("lookup".into(), ToolTiming { timeout: secs(2.0), pre_message: Some(("Checking.".into(), secs(0.5))) });
            let mut conv = Conversation::new(c);
            let mut now = Duration::ZERO;
            let mut ends = 0;
            conv.handle(now, Input::Start);
            let drain = |conv: &mut Conversation| {
                let mut n = 0;
                while let Some(a) = conv.poll_action() {
                    if matches!(a, Action::End { .. }) { n += 1; }
                }
                n
            };
            ends += drain(&mut conv);
            for (dt, input) in inputs {
                // A negative step feeds an older time than the engine has seen: it must count
                // as the latest one.
                let step = Duration::from_millis(dt.unsigned_abs() as u64);
                let target = if dt >= 0 { now + step } else { now.saturating_sub(step) };
                while let Some(t) = conv.poll_timeout().filter(|t| *t <= target) {
                    prop_assert!(t >= now || t + Duration::from_millis(100) >= now, "timer in the past: {:?} < {:?}", t, now);
                    now = now.max(t);
                    conv.handle_timeout(now);
                    ends += drain(&mut conv);
                }
                now = target;
                conv.handle(now, input);
                ends += drain(&mut conv);
            }
            // Run out the clock: the call must end by max duration.
            let mut guard = 0;
            while let Some(t) = conv.poll_timeout() {
                now = now.max(t);
                conv.handle_timeout(now);
                ends += drain(&mut conv);
                guard += 1;
                prop_assert!(guard < 100_000, "timer loop does not converge");
            }
            prop_assert_eq!(ends, 1);
            prop_assert!(conv.is_ended());
        }
    }
}

#[test]
fn shutdown_mid_speech_ends_as_error_with_hang_up_and_keeps_what_was_heard() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(1.0));
    sim.input(Input::Shutdown);
    assert_eq!(sim.ended(), Some((DisconnectedBy::Error, true)));
    assert_eq!(sim.conv.disconnected_by(), Some(DisconnectedBy::Error));
    let kinds: Vec<&str> = sim.conv.record().events.iter().map(|e| e.kind).collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["worker_shutdown", "call_ended"]);
    // The greeting was cut: the transcript keeps the part played before the shutdown.
    let t = sim.transcript();
    assert_eq!(t.len(), 1);
    assert!(t[0].2 && "Hello, this is the test line.".starts_with(&t[0].1), "{t:?}");
    // Nothing happens after the end, a second shutdown included.
    let actions = sim.log.len();
    sim.input(Input::Shutdown);
    sim.advance(secs(5.0));
    assert_eq!(sim.log.len(), actions);
}
