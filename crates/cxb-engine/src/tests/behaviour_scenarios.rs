//! Scenarios for the conversation rules of contract §7: interruptions, turn detection, silence,
//! voicemail, endings, tools, transfers, DTMF and filler — one per rule and their interactions.

use super::*;

const LONG_ANSWER: &str = "Your order shipped yesterday and should arrive tomorrow before noon at your door. ";

pub(super) fn events(sim: &Sim, kind: &str) -> Vec<Value> {
    sim.conv.record().events.iter().filter(|e| e.kind == kind).map(|e| Value::Object(e.data.clone())).collect()
}

pub(super) fn llm_requests(sim: &Sim) -> Vec<Vec<ChatMessage>> {
    sim.log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::StartLlm { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn spoken(sim: &Sim) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Speak { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn tool_names(sim: &Sim) -> Vec<String> {
    sim.conv.tools().iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_string)).collect()
}

pub(super) fn clears(sim: &Sim) -> usize {
    sim.count(|a| matches!(a, Action::ClearAudio))
}

pub(super) fn tool(name: &'static str, args: &'static str) -> Option<Reply> {
    Some(Reply { text: "", tools: vec![(name, args)] })
}

/// A call where the bot is in the middle of a long answer at the returned time.
fn bot_mid_answer(c: EngineConfig) -> Sim {
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say(LONG_ANSWER));
    sim.llm_script.push_back(say("Okay."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(2.0));
    sim
}

fn transfer_targets() -> Vec<TransferTarget> {
    vec![
        TransferTarget {
            id: Some("t1".into()),
            label: "Sales".into(),
            method: "websocket_reverse_transfer".into(),
            kind: "extension".into(),
            value: "2001".into(),
            is_default: true,
            enabled: true,
        },
        TransferTarget {
            id: Some("t2".into()),
            label: "Desk".into(),
            method: "livekit_sip_refer".into(),
            kind: "sip_uri".into(),
            value: "sip:desk@example.com".into(),
            is_default: false,
            enabled: true,
        },
    ]
}

/// What the driver hands the engine for a call on `transport`: the targets it can reach.
fn transfer_options(targets: &[TransferTarget], transport: &str) -> Option<TransferOptions> {
    TransferChoices::for_transport(targets, &BTreeMap::new(), transport)
        .map(|choices| TransferOptions { choices, pre_transfer_message: "Please hold while I transfer you.".into() })
}

pub(super) fn transfer_cfg() -> EngineConfig {
    let mut c = cfg();
    c.transfer = transfer_options(&transfer_targets(), "websocket");
    c
}

// ----- interruptions -----

#[test]
fn backchannels_never_interrupt_even_with_enough_words() {
    let mut sim = bot_mid_answer(cfg());
    sim.caller_says("haan haan ji", 600);
    sim.advance(secs(8.0));
    assert_eq!(clears(&sim), 0);
    assert_eq!(llm_requests(&sim).len(), 1, "a backchannel is not a turn");
    assert_eq!(events(&sim, "ignored_speech")[0]["text"], "haan haan ji");
    assert!(sim.transcript().iter().all(|l| !l.2), "nothing was cut");
}

#[test]
fn a_backchannel_word_is_a_real_answer_when_the_floor_is_free() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Great."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("yes", 400);
    sim.advance(secs(3.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].last().unwrap(), &ChatMessage::User("yes".into()));
}

#[test]
fn the_backchannel_list_is_configurable() {
    let mut c = cfg();
    c.backchannels = behaviour::PhraseSet::new(["bilkul sahi hai"]);
    let mut sim = bot_mid_answer(c);
    sim.caller_says("bilkul sahi hai", 600);
    sim.advance(secs(1.0));
    assert_eq!(clears(&sim), 0);
    // "okay okay okay" is no longer a backchannel with the custom list: three words interrupt.
    sim.caller_says("okay okay okay", 600);
    sim.advance(secs(1.0));
    assert_eq!(clears(&sim), 1);
}

#[test]
fn a_high_intent_phrase_interrupts_below_the_word_minimum() {
    let mut c = cfg();
    c.min_words_interruption = 5;
    let mut sim = bot_mid_answer(c);
    let t = sim.now;
    sim.caller_says("agent", 300);
    sim.advance(secs(3.0));
    let clear = sim.first_time(|a| matches!(a, Action::ClearAudio)).expect("interrupted");
    assert!(clear <= t + secs(0.3), "at the interim, not the turn end");
    assert_eq!(events(&sim, "high_intent").len(), 1);
    assert_eq!(llm_requests(&sim)[1].last().unwrap(), &ChatMessage::User("agent".into()));
}

#[test]
fn a_high_intent_phrase_breaks_through_the_opening_guard() {
    let mut c = cfg();
    c.opening_message = "Hello and welcome to the test line, we are glad you called us today.".into();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Sorry about that."));
    sim.input(Input::Start);
    sim.advance(secs(0.3));
    sim.caller_says("wrong number", 400);
    sim.advance(secs(2.0));
    assert_eq!(clears(&sim), 1);
    assert!(sim.first_time(|a| matches!(a, Action::ClearAudio)).unwrap() < secs(1.0));
}

#[test]
fn hindi_high_intent_variants_interrupt() {
    let mut sim = bot_mid_answer(cfg());
    sim.caller_says("maine pehle hi bhar diya", 900);
    sim.advance(secs(2.0));
    assert_eq!(clears(&sim), 1);
    let mut sim = bot_mid_answer(cfg());
    sim.caller_says("गलत नंबर", 600);
    sim.advance(secs(2.0));
    assert_eq!(clears(&sim), 1);
}

#[test]
fn barge_in_during_the_opening_after_the_guard() {
    let mut c = cfg();
    c.opening_message = "Hello and welcome to the test line, we are glad you called us today.".into();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Sure, go ahead."));
    sim.input(Input::Start);
    sim.advance(secs(1.5));
    sim.caller_says("I need to talk about my bill", 1000);
    sim.advance(secs(3.0));
    assert_eq!(clears(&sim), 1);
    let t = sim.transcript();
    assert!(t[0].2, "the opening is marked interrupted: {t:?}");
    let req = &llm_requests(&sim)[0];
    // The context keeps only the heard part of the greeting.
    let ChatMessage::Assistant { content: Some(heard), .. } = &req[1] else { panic!("{req:?}") };
    assert!(heard.len() < 60 && "Hello and welcome".starts_with(&heard[..5]), "{heard}");
}

#[test]
fn without_pausing_speech_that_never_becomes_words_does_not_stop_the_bot() {
    let mut sim = bot_mid_answer(cfg());
    let before = sim.count(is_play);
    sim.input(Input::SpeechStarted);
    sim.advance(secs(0.5));
    assert!(sim.count(is_play) >= before + 20, "audio keeps flowing while the noise lasts");
    sim.input(Input::SpeechStopped);
    sim.advance(secs(8.0));
    assert_eq!(clears(&sim), 0);
    assert!(sim.transcript().iter().all(|l| !l.2));
}

#[test]
fn a_false_interruption_pauses_and_then_resumes_the_bot() {
    let mut c = cfg();
    c.pause_on_speech = true;
    let mut sim = bot_mid_answer(c);
    sim.input(Input::SpeechStarted);
    let paused_at = sim.now;
    let before = sim.count(is_play);
    sim.advance(secs(0.3));
    assert_eq!(sim.count(is_play), before, "paused while the caller makes noise");
    sim.input(Input::SpeechStopped);
    sim.advance(secs(8.0));
    let e = events(&sim, "false_interruption");
    assert_eq!(e.len(), 1, "resumed once");
    let resumed = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).find(|t| *t > paused_at).unwrap();
    assert_eq!(resumed, paused_at + sim.conv.cfg.false_interruption_timeout);
    assert_eq!(clears(&sim), 0);
    // The whole answer was played and counts as heard in full.
    let full = LONG_ANSWER.trim();
    assert!(sim.transcript().iter().any(|l| l.1 == full && !l.2));
}

#[test]
fn a_paused_bot_is_interrupted_when_the_noise_becomes_words() {
    let mut c = cfg();
    c.pause_on_speech = true;
    let mut sim = bot_mid_answer(c);
    sim.caller_says("hold on a second please", 600);
    sim.advance(secs(3.0));
    assert_eq!(clears(&sim), 1);
    assert!(events(&sim, "false_interruption").is_empty());
    assert_eq!(llm_requests(&sim).len(), 2);
}

#[test]
fn a_backchannel_while_paused_resumes_the_bot() {
    let mut c = cfg();
    c.pause_on_speech = true;
    let mut sim = bot_mid_answer(c);
    sim.caller_says("hmm", 200);
    sim.advance(secs(8.0));
    assert_eq!(clears(&sim), 0);
    assert_eq!(events(&sim, "false_interruption").len(), 1);
    assert_eq!(llm_requests(&sim).len(), 1);
}

// ----- turn detection -----

/// The caller dictates `parts` with `gap` of silence between them (VAD stops and restarts).
fn dictate(sim: &mut Sim, parts: &[&'static str], gap: Duration) {
    let mut so_far = String::new();
    for part in parts {
        sim.input(Input::SpeechStarted);
        sim.advance(secs(0.6));
        if !so_far.is_empty() {
            so_far.push(' ');
        }
        so_far.push_str(part);
        sim.input(Input::Transcript { text: part.to_string(), is_final: true, speech_final: true });
        sim.advance(secs(0.2));
        sim.input(Input::SpeechStopped);
        sim.advance(gap);
    }
}

#[test]
fn a_phone_number_spelled_digit_by_digit_is_one_turn() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Thanks, noted."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    dictate(&mut sim, &["my number is nine eight seven", "six five four", "three two one zero"], secs(0.9));
    sim.advance(secs(2.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 1, "one turn, not three");
    assert_eq!(
        reqs[0].last().unwrap(),
        &ChatMessage::User("my number is nine eight seven six five four three two one zero".into())
    );
    // Ten digits are complete: that last pause closed the turn at once.
    let start = sim.first_time(|a| matches!(a, Action::StartLlm { .. })).unwrap();
    assert!(start < secs(3.0) + secs(3.0 * 1.7) + secs(0.1), "{start:?}");
}

#[test]
fn an_email_address_being_spelled_is_one_turn() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Got it."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    dictate(&mut sim, &["it is raj dot kumar at", "example dot com"], secs(1.0));
    sim.advance(secs(2.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].last().unwrap(), &ChatMessage::User("it is raj dot kumar at example dot com".into()));
}

#[test]
fn an_unfinished_number_still_closes_after_the_bounded_wait() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Could you repeat the rest?"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    dictate(&mut sim, &["it is nine eight seven"], secs(0.0));
    let stop = sim.now;
    sim.advance(secs(3.0));
    let start = sim.first_time(|a| matches!(a, Action::StartLlm { .. })).expect("turn closed");
    assert_eq!(start, stop + sim.conv.cfg.unfinished_wait);
}

#[test]
fn an_ordinary_sentence_closes_without_the_extra_wait() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Sure."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    dictate(&mut sim, &["I want to pay my bill"], secs(0.0));
    let stop = sim.now;
    sim.advance(secs(1.0));
    assert_eq!(sim.first_time(|a| matches!(a, Action::StartLlm { .. })), Some(stop));
}

// ----- silence -----

fn reengage(after: f64, attempts: u32) -> ReEngagementRule {
    ReEngagementRule {
        after: secs(after),
        max_attempts: attempts,
        messages: vec!["Are you still there?".into(), "Hello, can you hear me?".into()],
    }
}

#[test]
fn a_caller_silent_from_the_start_is_rnr() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(30.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Rnr, true)));
    // The silence clock starts when the greeting's last frame leaves (80 ms lead before heard).
    let opening_end = secs(0.1 + 1.74);
    let end = sim.first_time(|a| matches!(a, Action::End { .. })).unwrap();
    let expected = opening_end + sim.conv.cfg.rnr_timeout;
    assert!(end >= expected - secs(0.1) && end <= expected, "{end:?} vs {expected:?}");
    assert_eq!(events(&sim, "no_response").len(), 1);
}

#[test]
fn re_engagement_prompts_come_before_rnr() {
    let mut c = cfg();
    c.re_engagement = Some(reengage(5.0, 2));
    let mut sim = Sim::new(c);
    sim.input(Input::Start);
    sim.advance(secs(60.0));
    let s = spoken(&sim);
    assert_eq!(s[1..], ["Are you still there?".to_string(), "Hello, can you hear me?".to_string()]);
    assert_eq!(events(&sim, "re_engagement").len(), 2);
    assert_eq!(sim.ended(), Some((DisconnectedBy::Rnr, true)));
    // First prompt 5 s after the greeting ended.
    let prompt = sim.log.iter().filter(|(_, a)| matches!(a, Action::Speak { .. })).nth(1).unwrap().0;
    assert!((prompt.as_secs_f64() - (1.84 - 0.06 + 5.0)).abs() < 0.05, "{prompt:?}");
}

#[test]
fn dead_air_after_the_caller_spoke_ends_the_call_as_bot() {
    let mut c = cfg();
    c.dead_air_message = "I will call you back later. Goodbye.".into();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Let me know what else you need."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I have a question", 800);
    sim.advance(secs(40.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, true)));
    assert_eq!(events(&sim, "dead_air").len(), 1);
    assert_eq!(spoken(&sim).last().unwrap(), "I will call you back later. Goodbye.");
    // The goodbye was heard before the hang-up.
    let t = sim.transcript();
    assert_eq!(t.last().unwrap(), &(Speaker::Bot, "I will call you back later. Goodbye.".to_string(), false));
}

#[test]
fn speaking_resets_the_re_engagement_count() {
    let mut c = cfg();
    c.re_engagement = Some(reengage(4.0, 1));
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Okay."));
    sim.input(Input::Start);
    sim.advance(secs(7.0));
    assert_eq!(events(&sim, "re_engagement").len(), 1);
    sim.caller_says("yes I am here", 800);
    sim.advance(secs(8.0));
    assert_eq!(events(&sim, "re_engagement").len(), 2, "a fresh prompt after the caller spoke");
    assert!(sim.ended().is_none());
    sim.advance(secs(30.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, true)), "dead air, not RNR: the caller spoke");
}

#[test]
fn noise_does_not_count_as_the_caller_speaking_for_rnr() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(5.0));
    sim.input(Input::SpeechStarted);
    sim.advance(secs(0.5));
    sim.input(Input::SpeechStopped);
    sim.advance(secs(40.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Rnr, true)));
}

// ----- voicemail and endings -----

#[test]
fn voicemail_speaks_the_message_then_hangs_up_as_voicemail() {
    let mut c = cfg();
    c.voicemail_message = "Sorry we missed you, we will call back.".into();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(tool(VOICEMAIL_TOOL, "{}"));
    sim.input(Input::Start);
    sim.advance(secs(2.0));
    sim.caller_says("you have reached the voicemail of raj please leave a message", 2500);
    sim.advance(secs(3.5));
    // The machine keeps talking (beep, more words): the message is not interrupted.
    sim.caller_says("after the tone please record your message", 1500);
    sim.advance(secs(10.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Voicemail, true)));
    assert_eq!(clears(&sim), 0);
    let t = sim.transcript();
    assert!(t.iter().any(|l| l.0 == Speaker::Bot && l.1 == "Sorry we missed you, we will call back." && !l.2));
    assert_eq!(events(&sim, "voicemail_detected").len(), 1);
}

#[test]
fn voicemail_without_a_message_hangs_up_at_once() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(tool(VOICEMAIL_TOOL, "{}"));
    sim.input(Input::Start);
    sim.advance(secs(2.0));
    sim.caller_says("please leave a message after the beep", 1500);
    let turn_end = sim.now + secs(2.0);
    sim.advance(secs(3.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Voicemail, true)));
    assert!(sim.first_time(|a| matches!(a, Action::End { .. })).unwrap() < turn_end + secs(0.5));
}

#[test]
fn voicemail_detection_can_be_turned_off() {
    let mut c = cfg();
    c.voicemail_detection = false;
    let sim = Sim::new(c);
    assert!(!tool_names(&sim).contains(&VOICEMAIL_TOOL.to_string()));
    assert!(tool_names(&Sim::new(cfg())).contains(&VOICEMAIL_TOOL.to_string()));
}

#[test]
fn a_closure_phrase_ends_the_call_after_it_plays() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Your payment is confirmed. Thank you, have a great day!"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I paid it yesterday", 800);
    sim.advance(secs(10.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, true)));
    let end = sim.first_time(|a| matches!(a, Action::End { .. })).unwrap();
    let last_frame = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).next_back().unwrap();
    assert!(end >= last_frame + Duration::from_millis(20));
    assert_eq!(events(&sim, "closure_phrase").len(), 1);
}

#[test]
fn a_closure_phrase_followed_by_a_question_does_not_end_the_call() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Have a great day! Is there anything else?"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("thanks for the help", 800);
    sim.advance(secs(8.0));
    assert!(sim.ended().is_none());
}

#[test]
fn closure_phrases_can_be_turned_off() {
    let mut c = cfg();
    c.closure_phrases = behaviour::PhraseSet::default();
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Goodbye!"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("that is all thanks", 800);
    sim.advance(secs(8.0));
    assert!(sim.ended().is_none());
}

#[test]
fn barge_in_during_the_end_call_goodbye_keeps_the_call_open() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(Some(Reply {
        text: "",
        tools: vec![("end_call", r#"{"final_message":"Thank you for your time, I am ending the call now, goodbye."}"#)],
    }));
    sim.llm_script.push_back(say("Of course, what is it?"));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("okay that is all", 800);
    sim.advance(secs(2.2));
    sim.caller_says("wait one more thing please", 900);
    sim.advance(secs(6.0));
    assert!(sim.ended().is_none(), "the caller took the floor back");
    assert_eq!(llm_requests(&sim).len(), 2);
}

// ----- tools -----

#[test]
fn a_backchannel_during_a_tool_call_does_not_cancel_it() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"name": "lookup_order", "parameters": {"type": "object"}})];
    let mut sim = Sim::new(c);
    sim.tool_reply = Some((secs(2.0), r#"{"status":"shipped"}"#));
    sim.llm_script.push_back(tool("lookup_order", r#"{"id":"42"}"#));
    sim.llm_script.push_back(say("It has shipped."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is order forty two", 1000);
    sim.advance(secs(1.8));
    sim.caller_says("hmm okay", 300);
    sim.advance(secs(5.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 2);
    assert!(matches!(reqs[1].last().unwrap(), ChatMessage::Tool { content, .. } if content.contains("shipped")));
    assert_eq!(spoken(&sim).last().unwrap(), "It has shipped.");
}

#[test]
fn a_real_interruption_during_a_tool_call_abandons_it_for_the_new_turn() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"name": "lookup_order", "parameters": {"type": "object"}})];
    let mut sim = Sim::new(c);
    sim.tool_reply = Some((secs(3.0), "late"));
    sim.llm_script.push_back(tool("lookup_order", "{}"));
    sim.llm_script.push_back(say("Sure, cancelling."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(1.8));
    sim.caller_says("actually cancel the order instead", 1000);
    sim.advance(secs(6.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 2, "the late tool result does not start another request");
    // The abandoned tool round leaves no dangling tool call; the caller's words join one turn.
    assert_eq!(
        reqs[1].last().unwrap(),
        &ChatMessage::User("where is my order actually cancel the order instead".into())
    );
    assert!(!reqs[1].iter().any(|m| matches!(m, ChatMessage::Tool { .. })));
}

#[test]
fn a_slow_tool_speaks_its_pre_message() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"name": "lookup_order", "parameters": {"type": "object"}})];
    c.tool_timings.insert(
        "lookup_order".into(),
        ToolTiming { timeout: secs(10.0), pre_message: Some(("Let me check that for you.".into(), secs(1.0))) },
    );
    let mut sim = Sim::new(c);
    sim.tool_reply = Some((secs(4.0), "shipped"));
    sim.llm_script.push_back(tool("lookup_order", "{}"));
    sim.llm_script.push_back(say("It shipped."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(8.0));
    assert_eq!(spoken(&sim)[1..], ["Let me check that for you.".to_string(), "It shipped.".to_string()]);
    assert_eq!(events(&sim, "tool_pre_message").len(), 1);
}

#[test]
fn a_fast_tool_skips_its_pre_message() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"name": "lookup_order", "parameters": {"type": "object"}})];
    c.tool_timings.insert(
        "lookup_order".into(),
        ToolTiming { timeout: secs(10.0), pre_message: Some(("Let me check that for you.".into(), secs(1.0))) },
    );
    let mut sim = Sim::new(c);
    sim.tool_reply = Some((secs(0.3), "shipped"));
    sim.llm_script.push_back(tool("lookup_order", "{}"));
    sim.llm_script.push_back(say("It shipped."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(6.0));
    assert_eq!(spoken(&sim)[1..], ["It shipped.".to_string()]);
}

#[test]
fn a_tool_timeout_is_per_tool() {
    let mut c = cfg();
    c.custom_tools = vec![json!({"name": "slow", "parameters": {"type": "object"}})];
    c.tool_timings.insert("slow".into(), ToolTiming { timeout: secs(2.0), pre_message: None });
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(tool("slow", "{}"));
    sim.llm_script.push_back(say("Sorry, that did not work."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("check it", 600);
    let t = sim.now;
    sim.advance(secs(6.0));
    let second = sim.log.iter().filter(|(_, a)| matches!(a, Action::StartLlm { .. })).nth(1).unwrap().0;
    assert!(second < t + secs(4.0), "timed out after 2 s, not the 15 s default: {second:?}");
}

#[test]
fn custom_tools_cannot_shadow_built_ins_or_leak_their_binding() {
    let mut c = cfg();
    c.custom_tools = vec![
        json!({"name": "end_call", "parameters": {}}),
        json!({"name": "lookup", "parameters": {}, "http": {"url": "https://secret.example/x"}}),
    ];
    let sim = Sim::new(c);
    let names = tool_names(&sim);
    assert_eq!(names.iter().filter(|n| *n == "end_call").count(), 1);
    let lookup = sim.conv.tools().iter().find(|t| t["function"]["name"] == "lookup").unwrap();
    assert!(!lookup.to_string().contains("secret.example"));
}

// ----- transfers -----

#[test]
fn transfer_announces_then_transfers_to_the_resolved_target() {
    let mut sim = Sim::new(transfer_cfg());
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"wants sales"}"#));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I want to buy a new plan", 1000);
    sim.advance(secs(6.0));
    let transfer_at = sim.first_time(|a| matches!(a, Action::Transfer { .. })).expect("transferred");
    let t = sim.log.iter().find(|(_, a)| matches!(a, Action::Transfer { .. })).unwrap().1.clone();
    assert_eq!(
        t,
        Action::Transfer {
            to: ResolvedTransfer {
                destination: "2001".into(),
                method: "websocket_reverse_transfer".into(),
                kind: "extension".into(),
                target: "Sales".into(),
            },
            reason: "wants sales".into()
        }
    );
    // Only after the announcement was heard.
    let last_frame = sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).next_back().unwrap();
    assert!(transfer_at >= last_frame + Duration::from_millis(20));
    assert_eq!(spoken(&sim).last().unwrap(), "Please hold while I transfer you.");
    let sent = events(&sim, "transfer_sent");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["destination"], "2001");
    // The caller leaves once the dialler has taken the call.
    sim.input(Input::CustomerHangup);
    assert_eq!(sim.ended(), Some((DisconnectedBy::Customer, false)));
}

#[test]
fn an_agent_desk_handoff_ends_the_conversation_without_hanging_up() {
    let mut c = cfg();
    let queue = TransferTarget {
        id: Some("q1".into()),
        label: "Collections desk".into(),
        method: "agent_desk".into(),
        kind: "agent_queue".into(),
        value: "collections".into(),
        is_default: true,
        enabled: true,
    };
    c.transfer = transfer_options(&[queue], "livekit_inbound");
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"wants a person"}"#));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("let me talk to a real person", 1000);
    sim.advance(secs(6.0));
    let t = sim.log.iter().find(|(_, a)| matches!(a, Action::Transfer { .. })).expect("handed off").1.clone();
    let Action::Transfer { to, .. } = t else { unreachable!() };
    assert_eq!(
        (to.destination.as_str(), to.method.as_str(), to.kind.as_str()),
        ("collections", "agent_desk", "agent_queue")
    );
    // A durable enqueue ends the bot's part; the caller is not hung up on.
    assert_eq!(sim.ended(), Some((DisconnectedBy::TransferToAgent, false)));
    assert_eq!(events(&sim, "transfer_sent").len(), 1);
}

#[test]
fn an_unknown_transfer_target_is_reported_to_the_llm() {
    let mut sim = Sim::new(transfer_cfg());
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"x","target":"Desk"}"#));
    sim.llm_script.push_back(say("I can transfer you to Sales instead."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("put me through to the desk", 1000);
    sim.advance(secs(6.0));
    assert_eq!(sim.count(|a| matches!(a, Action::Transfer { .. })), 0);
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 2);
    let ChatMessage::Tool { content, .. } = reqs[1].last().unwrap() else { panic!() };
    assert!(content.contains("TransferTargetError") && content.contains("Sales"), "{content}");
    assert_eq!(events(&sim, "transfer_failed").len(), 1);
    assert!(spoken(&sim).iter().all(|s| s != "Please hold while I transfer you."));
}

#[test]
fn a_failed_transfer_goes_back_to_the_llm() {
    let mut sim = Sim::new(transfer_cfg());
    sim.transfer_reply = Some(Err("busy".into()));
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"sales"}"#));
    sim.llm_script.push_back(say("Sorry, nobody is free right now."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("transfer me to sales please", 1000);
    sim.advance(secs(8.0));
    let failed = events(&sim, "transfer_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"], "busy");
    assert_eq!(spoken(&sim).last().unwrap(), "Sorry, nobody is free right now.");
    assert!(sim.ended().is_none());
}

#[test]
fn a_transfer_without_confirmation_times_out_as_failed() {
    let mut sim = Sim::new(transfer_cfg());
    sim.transfer_reply = None;
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"sales"}"#));
    sim.llm_script.push_back(say("That did not work."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("transfer me to sales please", 1000);
    sim.advance(secs(20.0));
    assert!(events(&sim, "transfer_failed")[0]["error"].as_str().unwrap().contains("no confirmation"));
    assert_eq!(llm_requests(&sim).len(), 2);
}

#[test]
fn hang_up_during_the_transfer_announcement_ends_as_customer_without_transferring() {
    let mut sim = Sim::new(transfer_cfg());
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"sales"}"#));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("transfer me to sales please", 1000);
    sim.advance(secs(2.3));
    sim.input(Input::CustomerHangup);
    sim.advance(secs(5.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Customer, false)));
    assert_eq!(sim.count(|a| matches!(a, Action::Transfer { .. })), 0);
}

#[test]
fn caller_speech_during_a_transfer_is_not_answered() {
    let mut sim = Sim::new(transfer_cfg());
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"sales"}"#));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("transfer me to sales please", 1000);
    sim.advance(secs(2.2));
    sim.caller_says("hello are you still there", 1000);
    sim.advance(secs(5.0));
    assert_eq!(clears(&sim), 0, "the announcement is not interruptible");
    assert_eq!(llm_requests(&sim).len(), 1);
    assert_eq!(sim.count(|a| matches!(a, Action::Transfer { .. })), 1);
}

#[test]
fn after_a_transfer_the_bot_leaves_if_the_leg_is_never_dropped() {
    let mut sim = Sim::new(transfer_cfg());
    sim.llm_script.push_back(tool(TRANSFER_TOOL, r#"{"reason":"sales"}"#));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("transfer me to sales please", 1000);
    sim.advance(secs(80.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, false)), "left without hanging up the transferred leg");
    assert!(events(&sim, "re_engagement").is_empty() && events(&sim, "no_response").is_empty());
}

#[test]
fn transfer_is_offered_only_where_it_can_work() {
    assert!(tool_names(&Sim::new(transfer_cfg())).contains(&TRANSFER_TOOL.to_string()));
    assert!(!tool_names(&Sim::new(cfg())).contains(&TRANSFER_TOOL.to_string()));
    let mut exotel = transfer_cfg();
    exotel.transfer = transfer_options(&transfer_targets(), "exotel");
    assert!(!tool_names(&Sim::new(exotel)).contains(&TRANSFER_TOOL.to_string()));
}

// ----- DTMF -----

#[test]
fn keypresses_become_a_turn_after_the_input_timeout() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Thanks."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.input(Input::Dtmf { digits: "1".into() });
    sim.advance(secs(0.5));
    sim.input(Input::Dtmf { digits: "2".into() });
    let last = sim.now;
    sim.advance(secs(3.0));
    assert_eq!(llm_requests(&sim)[0].last().unwrap(), &ChatMessage::User("[DTMF] 12".into()));
    assert_eq!(sim.first_time(|a| matches!(a, Action::StartLlm { .. })), Some(last + secs(2.0)));
    assert_eq!(events(&sim, "dtmf").len(), 2);
}

#[test]
fn a_hash_key_ends_dtmf_input_at_once() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Thanks."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.input(Input::Dtmf { digits: "42#".into() });
    assert_eq!(sim.first_time(|a| matches!(a, Action::StartLlm { .. })), Some(secs(3.0)));
}

#[test]
fn a_keypress_interrupts_the_bot() {
    let mut sim = bot_mid_answer(cfg());
    sim.input(Input::Dtmf { digits: "9".into() });
    assert_eq!(clears(&sim), 1);
}

#[test]
fn send_dtmf_plays_tones_and_the_llm_continues() {
    let mut c = cfg();
    c.dtmf_send = true;
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(tool(SEND_DTMF_TOOL, r#"{"digits":"12"}"#));
    sim.llm_script.push_back(say("Done."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("press one two for me", 1000);
    let before = sim.count(is_play);
    sim.advance(secs(5.0));
    // Two tones and gaps: 400 ms = 20 frames, then the answer.
    assert!(sim.count(is_play) >= before + 20);
    let reqs = llm_requests(&sim);
    assert!(matches!(reqs[1].last().unwrap(), ChatMessage::Tool { content, .. } if content == "sent DTMF 12"));
    assert_eq!(events(&sim, "dtmf_sent")[0]["digits"], "12");
}

// ----- filler -----

#[test]
fn a_slow_llm_gets_a_filler_phrase() {
    let mut c = cfg();
    c.filler_phrases = vec!["One moment please.".into()];
    let mut sim = Sim::new(c);
    sim.llm_delay = secs(3.0);
    sim.llm_script.push_back(say("Here is your answer."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("what is my balance", 1000);
    sim.advance(secs(8.0));
    assert_eq!(spoken(&sim)[1..], ["One moment please.".to_string(), "Here is your answer.".to_string()]);
    let t = sim.transcript();
    assert_eq!(t[t.len() - 2].1, "One moment please.", "the filler plays before the answer");
}

#[test]
fn a_fast_llm_gets_no_filler() {
    let mut c = cfg();
    c.filler_phrases = vec!["One moment please.".into()];
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(say("Here is your answer."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("what is my balance", 1000);
    sim.advance(secs(5.0));
    assert_eq!(spoken(&sim)[1..], ["Here is your answer.".to_string()]);
}

#[test]
fn a_slow_tool_without_a_pre_message_gets_the_filler() {
    let mut c = cfg();
    c.filler_phrases = vec!["Just a second.".into()];
    c.custom_tools = vec![json!({"name": "lookup", "parameters": {}})];
    let mut sim = Sim::new(c);
    sim.tool_reply = Some((secs(3.0), "ok"));
    sim.llm_script.push_back(tool("lookup", "{}"));
    sim.llm_script.push_back(say("Found it."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("look it up please", 1000);
    sim.advance(secs(8.0));
    assert_eq!(spoken(&sim)[1..], ["Just a second.".to_string(), "Found it.".to_string()]);
}

// ----- playback marks -----

#[test]
fn each_utterance_signals_done_once_after_its_last_frame() {
    let mut sim = Sim::new(cfg());
    sim.llm_script.push_back(say("Sure thing. Your order ships tomorrow."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("where is my order", 1000);
    sim.advance(secs(6.0));
    let done: Vec<(Duration, u64)> = sim
        .log
        .iter()
        .filter_map(|(t, a)| match a {
            Action::UtteranceDone { utterance } => Some((*t, *utterance)),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 2, "opening and answer: {done:?}");
    // Done comes after the utterance's last frame and before the next utterance's first.
    let first_done = done[0].0;
    let frames_before = sim.log.iter().filter(|(t, a)| is_play(a) && *t <= first_done).count();
    assert_eq!(frames_before, 87, "all 87 opening frames precede its done signal");
}

#[test]
fn a_confirmed_utterance_counts_as_heard_in_full_at_hang_up() {
    let mut sim = Sim::new(cfg());
    sim.input(Input::Start);
    sim.advance(secs(1.8));
    // All frames released, the far end reports it played everything.
    let id = sim
        .log
        .iter()
        .find_map(|(_, a)| match a {
            Action::Speak { utterance, .. } => Some(*utterance),
            _ => None,
        })
        .unwrap();
    sim.input(Input::PlaybackConfirmed { utterance: id });
    sim.input(Input::CustomerHangup);
    let t = sim.transcript();
    assert_eq!(t, vec![(Speaker::Bot, "Hello, this is the test line.".to_string(), false)]);
}

// ----- smart turn -----

fn smart_turn_cfg() -> EngineConfig {
    let mut c = cfg();
    c.turn_model_max_wait = Some(secs(3.0));
    c
}

#[test]
fn smart_turn_closes_when_the_model_says_complete() {
    let mut sim = Sim::new(smart_turn_cfg());
    sim.llm_script.push_back(say("Sure."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I want to pay my bill", 1000);
    sim.advance(secs(1.6));
    assert_eq!(sim.count(|a| matches!(a, Action::PredictTurn)), 1);
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 0, "the final alone does not close the turn");
    sim.input(Input::TurnPrediction { complete: true });
    assert_eq!(sim.first_time(|a| matches!(a, Action::StartLlm { .. })), Some(sim.now));
}

#[test]
fn smart_turn_waits_through_an_incomplete_verdict_and_the_caller_goes_on() {
    let mut sim = Sim::new(smart_turn_cfg());
    sim.llm_script.push_back(say("Sure."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I want to", 600);
    sim.advance(secs(1.2));
    sim.input(Input::TurnPrediction { complete: false });
    sim.advance(secs(0.5));
    assert_eq!(sim.count(|a| matches!(a, Action::StartLlm { .. })), 0);
    sim.caller_says("pay my bill", 600);
    sim.advance(secs(1.2));
    sim.input(Input::TurnPrediction { complete: true });
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].last().unwrap(), &ChatMessage::User("I want to pay my bill".into()));
}

#[test]
fn smart_turn_wait_is_bounded_when_the_model_never_answers() {
    let mut sim = Sim::new(smart_turn_cfg());
    sim.llm_script.push_back(say("Sure."));
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("I want to pay my bill", 1000);
    let stop = sim.now + secs(1.5);
    sim.advance(secs(6.0));
    assert_eq!(sim.first_time(|a| matches!(a, Action::StartLlm { .. })), Some(stop + secs(3.0)));
}
