//! The caller always hears a goodbye before an `end_call` hang-up: the tool's `final_message`,
//! the turn's own words, the LLM's answer when asked for one, or the bot's `end_call_message`.

use super::behaviour_scenarios::{clears, events, llm_requests, spoken, tool};
use super::*;
use crate::ending::GOODBYE_REQUEST;

const FOLLOW_UP: &str = "Goodbye, and thank you for calling!";
const LONG_FOLLOW_UP: &str = "Thank you so much for your time today, goodbye and take care of yourself.";
const FALLBACK: &str = "Thank you for your time. Goodbye.";

fn goodbye_cfg() -> EngineConfig {
    let mut c = cfg();
    c.end_call_message = FALLBACK.into();
    c
}

/// The caller wraps up; the turn closes at 4.3 s and the LLM answers 200 ms later.
fn caller_wraps_up(sim: &mut Sim) {
    sim.input(Input::Start);
    sim.advance(secs(3.0));
    sim.caller_says("that is all thank you", 800);
}

fn goodbye_sources(sim: &Sim) -> Vec<String> {
    events(sim, "end_call_goodbye").iter().map(|e| e["source"].as_str().unwrap_or_default().to_string()).collect()
}

fn last_frame(sim: &Sim) -> Duration {
    sim.log.iter().filter(|(_, a)| is_play(a)).map(|(t, _)| *t).next_back().expect("audio played")
}

/// The goodbye was heard in full, and only then did the bot hang up.
fn assert_goodbye_then_hang_up(sim: &Sim, goodbye: &str) {
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, true)));
    let end_at = sim.first_time(|a| matches!(a, Action::End { .. })).unwrap();
    assert!(end_at >= last_frame(sim) + Duration::from_millis(20), "{end_at:?} vs {:?}", last_frame(sim));
    assert_eq!(sim.transcript().last().unwrap(), &(Speaker::Bot, goodbye.to_string(), false));
}

/// A call where the LLM ends the call with a bare `end_call`, then answers the request for a
/// goodbye with `follow_up` (`None`: never).
fn bare_end_call(c: EngineConfig, follow_up: Option<Reply>) -> Sim {
    let mut sim = Sim::new(c);
    sim.llm_script.push_back(tool(END_CALL_TOOL, "{}"));
    sim.llm_script.push_back(follow_up);
    caller_wraps_up(&mut sim);
    sim
}

/// The request for a goodbye: when it went out and its turn.
fn follow_up_request(sim: &Sim) -> (Duration, u64) {
    sim.llm_starts()[1]
}

/// An `end_call` that brings its own goodbye: no second request, the goodbye plays, hang-up.
fn end_call_with_its_own_goodbye(reply: Reply, goodbye: &str, source: &str) {
    let mut sim = Sim::new(goodbye_cfg());
    sim.llm_script.push_back(Some(reply));
    caller_wraps_up(&mut sim);
    sim.advance(secs(10.0));
    assert_eq!(llm_requests(&sim).len(), 1);
    assert_goodbye_then_hang_up(&sim, goodbye);
    assert_eq!(goodbye_sources(&sim), [source]);
}

#[test]
fn end_call_with_a_final_message_says_it_without_asking_again() {
    let args = r#"{"final_message":"Thanks for calling, goodbye!"}"#;
    let reply = Reply { text: "", tools: vec![(END_CALL_TOOL, args)] };
    end_call_with_its_own_goodbye(reply, "Thanks for calling, goodbye!", "final_message");
}

#[test]
fn end_call_after_spoken_words_needs_no_follow_up() {
    let text = "Thanks for calling, have a lovely evening.";
    end_call_with_its_own_goodbye(Reply { text, tools: vec![(END_CALL_TOOL, "{}")] }, text, "reply");
}

#[test]
fn a_bare_end_call_asks_the_llm_for_a_goodbye_and_hangs_up_once_it_is_heard() {
    let mut sim = bare_end_call(goodbye_cfg(), say(FOLLOW_UP));
    sim.advance(secs(10.0));
    let reqs = llm_requests(&sim);
    assert_eq!(reqs.len(), 2);
    let n = reqs[1].len();
    assert!(
        matches!(&reqs[1][n - 2], ChatMessage::Assistant { content: None, tool_calls } if tool_calls[0].name == END_CALL_TOOL),
        "{:?}",
        reqs[1][n - 2]
    );
    assert!(matches!(&reqs[1][n - 1], ChatMessage::Tool { content, .. } if content == GOODBYE_REQUEST));
    // The same tools go with it: some vendors refuse a tool call in the history without them.
    let tools: Vec<&Vec<Value>> = sim
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::StartLlm { tools, .. } => Some(tools),
            _ => None,
        })
        .collect();
    assert_eq!(tools[0], tools[1]);
    assert_goodbye_then_hang_up(&sim, FOLLOW_UP);
    assert_eq!(spoken(&sim).last().unwrap(), FOLLOW_UP);
    assert_eq!(goodbye_sources(&sim), ["llm_follow_up"]);
    // The reply to the caller's last turn is the goodbye: its latency is measured to it.
    assert!(sim.conv.record().latency[0].total_response_ms.is_some());
}

#[test]
fn a_failed_follow_up_falls_back_to_the_end_call_message() {
    let mut sim = bare_end_call(goodbye_cfg(), None);
    sim.advance(secs(1.6));
    let (_, turn) = follow_up_request(&sim);
    sim.input(Input::LlmFailed { turn, error: "HTTP 503".into() });
    sim.advance(secs(8.0));
    assert_goodbye_then_hang_up(&sim, FALLBACK);
    let e = events(&sim, "end_call_goodbye");
    assert_eq!((e[0]["source"].as_str(), e[0]["why"].as_str()), (Some("end_call_message"), Some("HTTP 503")));
    assert!(events(&sim, "service_error").is_empty(), "the call still ends as the bot's goodbye");
}

#[test]
fn a_follow_up_that_never_answers_times_out_into_the_end_call_message() {
    let mut sim = bare_end_call(goodbye_cfg(), None);
    sim.advance(secs(20.0));
    let (asked, turn) = follow_up_request(&sim);
    assert_eq!(sim.count(|a| matches!(a, Action::CancelLlm { turn: t } if *t == turn)), 1);
    let fallback_at = sim.first_time(|a| matches!(a, Action::Speak { text, .. } if text == FALLBACK)).unwrap();
    assert_eq!(fallback_at, asked + sim.conv.cfg.llm_first_token_timeout);
    assert_goodbye_then_hang_up(&sim, FALLBACK);
    assert!(events(&sim, "end_call_goodbye")[0]["why"].as_str().unwrap().contains("no response within"));
}

#[test]
fn an_empty_follow_up_falls_back_to_the_end_call_message() {
    let mut sim = bare_end_call(goodbye_cfg(), say(""));
    sim.advance(secs(10.0));
    assert_goodbye_then_hang_up(&sim, FALLBACK);
    assert_eq!(goodbye_sources(&sim), ["end_call_message"]);
}

#[test]
fn a_tool_call_in_the_follow_up_is_ignored_and_the_end_call_message_plays() {
    let mut c = goodbye_cfg();
    c.custom_tools = vec![json!({"name": "lookup", "parameters": {}})];
    let mut sim = bare_end_call(c, tool("lookup", "{}"));
    sim.llm_script.push_back(say("This must never be asked for."));
    sim.advance(secs(10.0));
    assert_eq!(llm_requests(&sim).len(), 2, "no loop");
    assert_eq!(sim.count(|a| matches!(a, Action::RunTool { .. })), 0);
    assert_goodbye_then_hang_up(&sim, FALLBACK);
    assert_eq!(events(&sim, "end_call_goodbye")[0]["why"], "a tool call instead of words");
}

#[test]
fn caller_speech_and_keys_during_the_goodbye_do_not_cut_it() {
    let mut c = goodbye_cfg();
    c.pause_on_speech = true;
    let mut sim = bare_end_call(c, say(LONG_FOLLOW_UP));
    sim.llm_delay = secs(1.0);
    // The turn closes at 4.3 s; end_call at 5.3 s; the goodbye is asked for and comes at 6.3 s.
    sim.advance(secs(2.4));
    sim.caller_says("hello are you still there", 700);
    sim.advance(secs(2.0));
    // Now the goodbye is playing.
    assert!(sim.log.iter().any(|(t, a)| is_play(a) && *t > secs(6.3)));
    sim.caller_says("wait one more thing please", 900);
    sim.input(Input::Dtmf { digits: "5".into() });
    sim.advance(secs(10.0));
    assert_eq!(clears(&sim), 0);
    assert_eq!(llm_requests(&sim).len(), 2);
    assert!(events(&sim, "bot_paused").is_empty());
    assert_eq!(events(&sim, "ignored_speech").iter().filter(|e| e["why"] == "ending").count(), 2);
    assert_goodbye_then_hang_up(&sim, LONG_FOLLOW_UP);
}

#[test]
fn a_hang_up_during_the_goodbye_ends_the_call_as_customer() {
    let mut sim = bare_end_call(goodbye_cfg(), say(LONG_FOLLOW_UP));
    sim.advance(secs(2.5));
    let (asked, _) = follow_up_request(&sim);
    assert!(sim.log.iter().any(|(t, a)| is_play(a) && *t > asked), "the goodbye is playing");
    sim.input(Input::CustomerHangup);
    sim.advance(secs(5.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Customer, false)));
    let last = sim.transcript().last().cloned().unwrap();
    assert!(last.2 && LONG_FOLLOW_UP.starts_with(&last.1), "{last:?}");
}

#[test]
fn an_empty_end_call_message_hangs_up_without_a_fallback() {
    let mut c = goodbye_cfg();
    c.end_call_message = "  ".into();
    let mut sim = bare_end_call(c, say(""));
    sim.advance(secs(10.0));
    assert_eq!(sim.ended(), Some((DisconnectedBy::Bot, true)));
    assert_eq!(spoken(&sim).len(), 1, "only the opening was spoken");
}
