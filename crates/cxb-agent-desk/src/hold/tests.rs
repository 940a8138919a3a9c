use std::time::Duration;

use proptest::prelude::*;

use super::*;

const RATE: u32 = 16_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A loop whose sample values are their own index (gain 1), so positions can be checked.
fn ramp_audio(len: usize) -> HoldAudio {
    let samples: Vec<i16> = (0..len).map(|i| i as i16).collect();
    HoldAudio::from_samples(samples, RATE).expect("valid").with_gain(1.0)
}

fn cfg(message: Option<&str>) -> HoldConfig {
    HoldConfig { message: message.map(str::to_string), ..HoldConfig::default() }
}

fn drain(h: &mut Hold) -> Vec<HoldAction> {
    std::iter::from_fn(|| h.poll_action()).collect()
}

fn frames_at(h: &mut Hold, now: Duration) -> Vec<Vec<i16>> {
    let mut out = Vec::new();
    while let Some(f) = h.poll_frame(now) {
        out.push(f.to_vec());
        assert!(out.len() < 10_000, "poll_frame never stops");
    }
    out
}

fn kinds(actions: &[HoldAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            HoldAction::Speak { .. } => "speak".to_string(),
            HoldAction::StopAudio => "stop".to_string(),
            HoldAction::Event { kind, .. } => format!("event:{kind}"),
            HoldAction::End { outcome, .. } => format!("end:{outcome}"),
        })
        .collect()
}

fn end_of(actions: &[HoldAction]) -> Option<(HoldOutcome, String, Duration, Duration, bool)> {
    actions.iter().find_map(|a| match a {
        HoldAction::End { outcome, reason, at, hold, agent_joined } => {
            Some((*outcome, reason.clone(), *at, *hold, *agent_joined))
        }
        _ => None,
    })
}

/// Polls every millisecond from `from` to `to`; returns the frames released.
fn run_ms(h: &mut Hold, from: Duration, to: Duration) -> usize {
    let mut n = 0;
    let mut t = from;
    while t <= to {
        h.handle_timeout(t);
        n += frames_at(h, t).len();
        t += ms(1);
    }
    n
}

#[test]
fn music_is_paced_in_real_time_with_a_small_lead() {
    let mut h = Hold::new(cfg(None), HoldAudio::tone(RATE).expect("tone"));
    let start = secs(3);
    h.handle(start, HoldInput::Start);
    assert_eq!(kinds(&drain(&mut h)), ["event:hold_started"]);
    let lead_frames = (h.config().playout_lead.as_millis() / 20) as u64;
    let mut released = 0u64;
    let mut t = start;
    while t <= start + secs(10) {
        h.handle_timeout(t);
        for f in frames_at(&mut h, t) {
            assert_eq!(f.len(), 320, "20 ms at 16 kHz");
            released += 1;
        }
        let elapsed_frames = (t - start).as_millis() as u64 / 20;
        // Never more than the lead ahead, never behind real time.
        assert!(released <= elapsed_frames + lead_frames + 1, "at {t:?}: {released} released");
        assert!(released > elapsed_frames, "at {t:?}: {released} released");
        t += ms(1);
    }
    // 50 frames per second, plus the lead.
    assert_eq!(released, 500 + lead_frames + 1);
    // The driver sleeps until the next frame is due, not longer.
    let next = h.poll_timeout().expect("music needs a wake-up");
    assert!(next > start + secs(10) && next <= start + secs(10) + ms(20), "{next:?}");
}

#[test]
fn a_late_driver_gets_no_burst() {
    let mut h = Hold::new(cfg(None), HoldAudio::tone(RATE).expect("tone"));
    h.handle(Duration::ZERO, HoldInput::Start);
    assert_eq!(frames_at(&mut h, Duration::ZERO).len(), 4);
    // The driver stalls for a second: pacing restarts instead of releasing 50 frames at once.
    assert_eq!(frames_at(&mut h, secs(1)).len(), 4);
}

#[test]
fn the_loop_wraps_seamlessly_and_the_gain_applies() {
    let len = 1000; // not a multiple of the 320-sample frame
    let mut h = Hold::new(cfg(None), ramp_audio(len));
    h.handle(Duration::ZERO, HoldInput::Start);
    let mut all: Vec<i16> = Vec::new();
    let mut t = Duration::ZERO;
    while all.len() < 5 * len {
        all.extend(frames_at(&mut h, t).concat());
        t += ms(20);
    }
    for (i, s) in all.iter().enumerate() {
        assert_eq!(*s as usize, i % len, "sample {i}");
    }

    let half = ramp_audio(len).with_gain(0.5);
    let mut h = Hold::new(cfg(None), half);
    h.handle(Duration::ZERO, HoldInput::Start);
    let f = frames_at(&mut h, Duration::ZERO).concat();
    assert_eq!(f[300], 150);
    assert_eq!(ramp_audio(len).with_gain(f32::NAN).gain(), DEFAULT_GAIN);
    assert_eq!(ramp_audio(len).with_gain(100.0).gain(), MAX_GAIN);
}

#[test]
fn the_message_is_spoken_first_then_music_plays() {
    let mut h = Hold::new(cfg(Some("  Please hold, an agent will be with you shortly. ")), ramp_audio(2000));
    h.handle(secs(1), HoldInput::Start);
    let a = drain(&mut h);
    assert_eq!(kinds(&a), ["event:hold_started", "event:hold_message", "speak"]);
    assert!(a.contains(&HoldAction::Speak { text: "Please hold, an agent will be with you shortly.".into() }));
    assert!(h.audio_active());
    // No music while the message is spoken.
    assert_eq!(run_ms(&mut h, secs(1), secs(4)), 0);
    h.handle(secs(4), HoldInput::MessageDone);
    assert!(drain(&mut h).is_empty());
    assert_eq!(frames_at(&mut h, secs(4)).len(), 4, "music starts at once, with the lead");
    // A second MessageDone changes nothing.
    h.handle(secs(4), HoldInput::MessageDone);
    assert!(drain(&mut h).is_empty());
}

#[test]
fn reminders_pause_the_music_and_it_resumes_where_it_stopped() {
    let len = 30_000; // < i16::MAX, so sample values are their index
    let c = HoldConfig { reminder_every: secs(10), ..cfg(Some("Still holding.")) };
    let mut h = Hold::new(c, ramp_audio(len));
    h.handle(Duration::ZERO, HoldInput::Start);
    drain(&mut h);
    h.handle(secs(2), HoldInput::MessageDone);
    let mut heard: Vec<i16> = Vec::new();
    let mut t = secs(2);
    let mut speaks = Vec::new();
    while t <= secs(40) {
        h.handle_timeout(t);
        for a in drain(&mut h) {
            if let HoldAction::Speak { .. } = a {
                speaks.push(t);
            }
        }
        if speaks.len() == 1 && t == speaks[0] + secs(3) {
            h.handle(t, HoldInput::MessageDone);
        }
        if speaks.len() == 2 && t == speaks[1] + secs(3) {
            h.handle(t, HoldInput::MessageDone);
        }
        heard.extend(frames_at(&mut h, t).concat());
        t += ms(20);
    }
    // 10 s of music after each message end.
    assert_eq!(speaks, [secs(12), secs(25), secs(38)]);
    // Music position continued across the pauses: the samples heard are one unbroken ramp.
    for (i, s) in heard.iter().enumerate() {
        assert_eq!(*s as usize, i % len, "sample {i}");
    }
}

/// Start with a message and return the hold, its message already asked for.
fn speaking(c: HoldConfig, music: HoldAudio) -> Hold {
    let mut h = Hold::new(c, music);
    h.handle(Duration::ZERO, HoldInput::Start);
    assert!(kinds(&drain(&mut h)).contains(&"speak".to_string()));
    h
}

#[test]
fn the_message_audio_is_paced_like_music_and_the_music_follows_without_a_gap() {
    // Music samples are small positive numbers, the message's are negative: each frame tells
    // where it came from.
    let mut h = speaking(cfg(Some("Please hold.")), ramp_audio(2000));
    assert_eq!(h.poll_timeout(), Some(h.config().message_timeout), "nothing to play before the audio");
    assert!(frames_at(&mut h, ms(100)).is_empty());
    // One second of message audio arrives at once (the TTS is faster than real time).
    let message: Vec<i16> = (0..16_000).map(|i| -1 - (i % 1000) as i16).collect();
    h.handle(ms(100), HoldInput::MessageAudio(message[..8_000].to_vec()));
    h.handle(ms(100), HoldInput::MessageAudio(message[8_000..].to_vec()));
    h.handle(ms(100), HoldInput::MessageSynthDone);
    assert!(drain(&mut h).is_empty());
    let lead_frames = (h.config().playout_lead.as_millis() / 20) as usize;
    let mut heard: Vec<Vec<i16>> = Vec::new();
    let mut t = ms(100);
    while t <= ms(1_600) {
        h.handle_timeout(t);
        heard.extend(frames_at(&mut h, t));
        let elapsed = (t - ms(100)).as_millis() as usize / 20;
        assert!(heard.len() <= elapsed + lead_frames + 1, "at {t:?}: {} frames", heard.len());
        t += ms(1);
    }
    // The whole message first, in order and unchanged...
    let spoken: Vec<i16> = heard.iter().take(50).flatten().copied().collect();
    assert_eq!(spoken, message);
    // ...then the music at once, paced on the same clock: 1.5 s played in all, plus the lead.
    assert!(heard[50..].iter().all(|f| f.iter().all(|s| *s >= 0)), "music after the message");
    assert_eq!(heard.len(), 75 + lead_frames + 1);
    assert_eq!(heard[50][0], 0, "the music starts at its beginning");
    assert!(h.audio_active());
}

#[test]
fn the_last_piece_of_a_message_is_padded_to_a_whole_frame() {
    let mut h = speaking(cfg(Some("Please hold.")), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::MessageAudio(vec![-7; 500]));
    // Only whole frames go while the TTS is still sending.
    assert_eq!(frames_at(&mut h, Duration::ZERO).len(), 1);
    assert!(frames_at(&mut h, ms(500)).is_empty(), "waits for the rest of the message");
    h.handle(ms(500), HoldInput::MessageSynthDone);
    let f = frames_at(&mut h, ms(500));
    assert_eq!(f[0][..180], [-7; 180]);
    assert_eq!(f[0][180..], [0; 140]);
    assert!(f[1..].iter().all(|f| f.iter().all(|s| *s >= 0)), "then music");
}

#[test]
fn message_audio_is_bounded_and_ignored_when_no_message_is_spoken() {
    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    h.handle(Duration::ZERO, HoldInput::MessageAudio(vec![-1; 16_000]));
    h.handle(Duration::ZERO, HoldInput::MessageSynthDone);
    let f = frames_at(&mut h, Duration::ZERO).concat();
    assert!(!f.is_empty() && f.iter().all(|s| *s >= 0), "music only");

    let c = HoldConfig { message_timeout: secs(600), ..cfg(Some("Please hold.")) };
    let mut h = speaking(c, ramp_audio(2000));
    for _ in 0..100 {
        h.handle(Duration::ZERO, HoldInput::MessageAudio(vec![-1; 16_000]));
    }
    h.handle(Duration::ZERO, HoldInput::MessageSynthDone);
    let limit = MAX_MESSAGE.as_secs() as usize * 50;
    let mut message_frames = 0;
    let mut t = Duration::ZERO;
    while t < secs(120) {
        message_frames += frames_at(&mut h, t).iter().filter(|f| f[0] < 0).count();
        t += ms(20);
    }
    assert_eq!(message_frames, limit, "{} s of message at most", MAX_MESSAGE.as_secs());
}

#[test]
fn a_message_whose_synthesis_never_ends_is_cut_by_the_timeout() {
    let c = HoldConfig { message_timeout: secs(5), ..cfg(Some("Please hold.")) };
    let mut h = speaking(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::MessageAudio(vec![-1; 3_200]));
    assert_eq!(run_ms(&mut h, Duration::ZERO, secs(4)), 10, "the audio there was plays");
    h.handle_timeout(secs(5));
    assert_eq!(kinds(&drain(&mut h)), ["stop", "event:hold_message_timeout"]);
    let f = frames_at(&mut h, secs(5));
    assert_eq!(f.len(), 4, "music with a fresh lead");
    assert!(f.iter().all(|f| f.iter().all(|s| *s >= 0)));
}

#[test]
fn message_done_drops_what_is_left_of_the_message() {
    let mut h = speaking(cfg(Some("Please hold.")), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::MessageAudio(vec![-1; 16_000]));
    assert_eq!(frames_at(&mut h, Duration::ZERO).len(), 4);
    h.handle(ms(20), HoldInput::MessageDone);
    assert!(frames_at(&mut h, secs(1)).iter().all(|f| f.iter().all(|s| *s >= 0)));
}

#[test]
fn zero_reminder_interval_never_repeats_the_message() {
    let c = HoldConfig { reminder_every: Duration::ZERO, ..cfg(Some("Please hold.")) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    drain(&mut h);
    h.handle(secs(2), HoldInput::MessageDone);
    run_ms(&mut h, secs(2), secs(200));
    assert!(drain(&mut h).is_empty());
}

#[test]
fn a_lost_message_done_does_not_leave_the_caller_in_silence() {
    let c = HoldConfig { message_timeout: secs(15), ..cfg(Some("Please hold.")) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    drain(&mut h);
    assert_eq!(h.poll_timeout(), Some(secs(15)));
    h.handle_timeout(secs(15));
    assert_eq!(kinds(&drain(&mut h)), ["stop", "event:hold_message_timeout"]);
    assert_eq!(frames_at(&mut h, secs(15)).len(), 4);
}

#[test]
fn an_agent_joining_stops_the_audio_within_one_frame() {
    let mut h = Hold::new(cfg(None), HoldAudio::tone(RATE).expect("tone"));
    h.handle(Duration::ZERO, HoldInput::Start);
    drain(&mut h);
    assert!(run_ms(&mut h, Duration::ZERO, ms(5_010)) > 0);
    h.handle(ms(5_010), HoldInput::AgentJoined { identity: "agent-7".into() });
    let a = drain(&mut h);
    assert_eq!(kinds(&a), ["stop", "event:agent_joined"]);
    let HoldAction::Event { data, at, .. } = &a[1] else { panic!("event") };
    assert_eq!(*at, ms(5_010));
    assert_eq!(data["identity"], "agent-7");
    assert_eq!(data["hold_seconds"], 5.01);
    // Nothing more is released, ever.
    assert_eq!(run_ms(&mut h, ms(5_010), secs(30)), 0);
    assert!(!h.audio_active());
    assert!(h.agent_joined());
    assert_eq!(h.agents().collect::<Vec<_>>(), ["agent-7"]);
    // Quiet: no reminders, no hold limit; the only timer is after_agent_max.
    assert_eq!(h.poll_timeout(), Some(ms(5_010) + h.config().after_agent_max));
}

#[test]
fn an_agent_joining_during_the_message_cuts_it() {
    let mut h = Hold::new(cfg(Some("Please hold.")), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    drain(&mut h);
    h.handle(secs(1), HoldInput::AgentJoined { identity: "a".into() });
    assert_eq!(kinds(&drain(&mut h)), ["stop", "event:agent_joined"]);
    h.handle(secs(2), HoldInput::MessageDone);
    assert!(drain(&mut h).is_empty());
    assert_eq!(run_ms(&mut h, secs(2), secs(5)), 0);
}

#[test]
fn the_customer_leaving_ends_the_hold() {
    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(secs(10), HoldInput::Start);
    drain(&mut h);
    run_ms(&mut h, secs(10), secs(20));
    h.handle(secs(20), HoldInput::CustomerLeft { reason: "participant_left".into() });
    let a = drain(&mut h);
    assert_eq!(kinds(&a), ["stop", "event:hold_ended", "end:customer_left"]);
    assert_eq!(end_of(&a), Some((HoldOutcome::CustomerLeft, "participant_left".into(), secs(20), secs(10), false)));
    assert!(h.is_ended());
    assert_eq!(h.outcome(), Some(HoldOutcome::CustomerLeft));
}

#[test]
fn the_customer_leaving_while_an_agent_talks_reports_the_hold_time() {
    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(secs(10), HoldInput::Start);
    h.handle(secs(70), HoldInput::AgentJoined { identity: "a".into() });
    drain(&mut h);
    h.handle(secs(400), HoldInput::CustomerLeft { reason: "bye".into() });
    let a = drain(&mut h);
    assert_eq!(kinds(&a), ["event:hold_ended", "end:customer_left"], "nothing was playing");
    assert_eq!(end_of(&a), Some((HoldOutcome::CustomerLeft, "bye".into(), secs(400), secs(60), true)));
}

#[test]
fn other_terminal_inputs_map_to_their_outcomes() {
    for (input, outcome) in [
        (HoldInput::RoomClosed { reason: "room deleted".into() }, HoldOutcome::RoomClosed),
        (HoldInput::EndRequested { reason: "drain".into() }, HoldOutcome::EndRequested),
        (HoldInput::CustomerLeft { reason: "x".into() }, HoldOutcome::CustomerLeft),
    ] {
        let mut h = Hold::new(cfg(None), ramp_audio(2000));
        h.handle(Duration::ZERO, HoldInput::Start);
        h.handle(secs(1), input);
        assert_eq!(end_of(&drain(&mut h)).map(|e| e.0), Some(outcome));
    }
}

#[test]
fn max_hold_bounds_the_wait_for_an_agent() {
    let c = HoldConfig { max_hold: secs(90), reminder_every: secs(30), ..cfg(Some("Please hold.")) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(secs(5), HoldInput::Start);
    let mut now = secs(5);
    let mut end = None;
    // Drive it like the real driver: wake at poll_timeout, answer every Speak after 2 s.
    let mut done_at = None;
    for _ in 0..100_000 {
        for a in drain(&mut h) {
            match a {
                HoldAction::Speak { .. } => done_at = Some(now + secs(2)),
                HoldAction::End { outcome, at, .. } => end = Some((outcome, at)),
                _ => {}
            }
        }
        frames_at(&mut h, now);
        if h.is_ended() {
            break;
        }
        let next = [h.poll_timeout(), done_at].into_iter().flatten().min().expect("a bounded wait");
        now = next;
        if done_at == Some(now) {
            done_at = None;
            h.handle(now, HoldInput::MessageDone);
        } else {
            h.handle_timeout(now);
        }
    }
    assert_eq!(end, Some((HoldOutcome::HoldTimeout, secs(95))));
    assert!(h.poll_timeout().is_none());
}

#[test]
fn after_agent_max_bounds_the_agent_call() {
    let c = HoldConfig { after_agent_max: secs(600), ..cfg(None) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    h.handle(secs(30), HoldInput::AgentJoined { identity: "a".into() });
    drain(&mut h);
    assert_eq!(h.poll_timeout(), Some(secs(630)));
    h.handle_timeout(secs(629));
    assert!(drain(&mut h).is_empty());
    h.handle_timeout(secs(630));
    let end = end_of(&drain(&mut h)).expect("ended");
    assert_eq!((end.0, end.2, end.3, end.4), (HoldOutcome::HoldTimeout, secs(630), secs(30), true));
}

#[test]
fn the_last_agent_leaving_finishes_the_call_after_a_grace_period() {
    let c = HoldConfig { agent_left_grace: secs(10), ..cfg(None) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    h.handle(secs(30), HoldInput::AgentJoined { identity: "a".into() });
    h.handle(secs(31), HoldInput::AgentJoined { identity: "b".into() });
    h.handle(secs(32), HoldInput::AgentLeft { identity: "stranger".into() });
    drain(&mut h);
    h.handle(secs(100), HoldInput::AgentLeft { identity: "a".into() });
    assert_eq!(kinds(&drain(&mut h)), ["event:agent_left"]);
    assert_eq!(h.poll_timeout(), Some(secs(30) + h.config().after_agent_max), "b is still there");
    h.handle(secs(200), HoldInput::AgentLeft { identity: "b".into() });
    drain(&mut h);
    assert_eq!(h.poll_timeout(), Some(secs(210)));
    // A reconnect within the grace keeps the call.
    h.handle(secs(205), HoldInput::AgentJoined { identity: "b".into() });
    let a = drain(&mut h);
    let HoldAction::Event { data, .. } = &a[0] else { panic!("event") };
    assert_eq!(data["rejoined"], true);
    h.handle_timeout(secs(215));
    assert!(!h.is_ended());
    h.handle(secs(300), HoldInput::AgentLeft { identity: "b".into() });
    h.handle_timeout(secs(310));
    let end = end_of(&drain(&mut h)).expect("ended");
    assert_eq!((end.0, end.2), (HoldOutcome::AgentFinished, secs(310)));
}

#[test]
fn zero_grace_ends_as_soon_as_the_agent_leaves() {
    let c = HoldConfig { agent_left_grace: Duration::ZERO, ..cfg(None) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    h.handle(secs(3), HoldInput::AgentJoined { identity: "a".into() });
    h.handle(secs(9), HoldInput::AgentLeft { identity: "a".into() });
    let a = drain(&mut h);
    assert_eq!(end_of(&a).map(|e| (e.0, e.2)), Some((HoldOutcome::AgentFinished, secs(9))));
}

#[test]
fn nothing_happens_after_the_end() {
    let mut h = Hold::new(cfg(Some("hold")), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    h.handle(secs(1), HoldInput::RoomClosed { reason: "gone".into() });
    assert!(end_of(&drain(&mut h)).is_some());
    for input in [
        HoldInput::Start,
        HoldInput::MessageDone,
        HoldInput::MessageAudio(vec![-1; 320]),
        HoldInput::MessageSynthDone,
        HoldInput::AgentJoined { identity: "a".into() },
        HoldInput::AgentLeft { identity: "a".into() },
        HoldInput::CustomerLeft { reason: "x".into() },
        HoldInput::EndRequested { reason: "x".into() },
    ] {
        h.handle(secs(2), input);
    }
    h.handle_timeout(secs(100_000));
    assert!(drain(&mut h).is_empty());
    assert!(h.poll_frame(secs(100_000)).is_none());
    assert!(h.poll_timeout().is_none());
}

#[test]
fn inputs_before_start() {
    let mut h = Hold::new(cfg(Some("hold")), ramp_audio(2000));
    assert!(h.poll_timeout().is_none());
    assert!(h.poll_frame(secs(1)).is_none());
    h.handle(secs(1), HoldInput::MessageDone);
    h.handle(secs(1), HoldInput::AgentLeft { identity: "a".into() });
    assert!(drain(&mut h).is_empty());
    // An agent faster than the driver's Start: straight to the quiet phase.
    h.handle(secs(2), HoldInput::AgentJoined { identity: "a".into() });
    h.handle(secs(2), HoldInput::Start);
    assert_eq!(kinds(&drain(&mut h)), ["event:agent_joined"]);
    assert!(h.poll_frame(secs(3)).is_none());

    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(secs(4), HoldInput::CustomerLeft { reason: "early".into() });
    let end = end_of(&drain(&mut h)).expect("ended");
    assert_eq!((end.0, end.3, end.4), (HoldOutcome::CustomerLeft, Duration::ZERO, false));
}

#[test]
fn time_running_backwards_is_clamped() {
    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(secs(10), HoldInput::Start);
    assert_eq!(frames_at(&mut h, secs(10)).len(), 4);
    assert!(frames_at(&mut h, secs(5)).is_empty());
    h.handle(secs(1), HoldInput::CustomerLeft { reason: "x".into() });
    let end = end_of(&drain(&mut h)).expect("ended");
    assert_eq!((end.2, end.3), (secs(10), Duration::ZERO));
}

#[test]
fn late_inputs_cannot_undo_a_passed_limit() {
    let c = HoldConfig { max_hold: secs(60), ..cfg(None) };
    let mut h = Hold::new(c, ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    // The driver was slow: the agent's join is only seen after max_hold passed.
    h.handle(secs(61), HoldInput::AgentJoined { identity: "a".into() });
    let a = drain(&mut h);
    assert_eq!(end_of(&a).map(|e| (e.0, e.2)), Some((HoldOutcome::HoldTimeout, secs(61))));
    assert!(!kinds(&a).contains(&"event:agent_joined".to_string()));
}

#[test]
fn agent_identities_are_bounded() {
    let mut h = Hold::new(cfg(None), ramp_audio(2000));
    h.handle(Duration::ZERO, HoldInput::Start);
    for i in 0..1000 {
        h.handle(secs(1), HoldInput::AgentJoined { identity: format!("agent-{i}") });
    }
    assert_eq!(h.agents().count(), MAX_AGENTS);
}

// ---------------------------------------------------------------------------------------------
// Audio

#[test]
fn the_tone_is_an_audible_seamless_loop() {
    for rate in [8_000, 16_000, 48_000] {
        let t = HoldAudio::tone(rate).expect("tone");
        assert_eq!(t.rate(), rate);
        assert_eq!(t.frame_samples(), rate as usize / 50);
        assert_eq!(t.duration(), Duration::from_millis(3200));
        let s = t.samples();
        let peak = s.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 5_000 && peak < 20_000, "peak {peak}");
        assert_seamless(s);
    }
    for bad in [0, 7_999, 8_001, 96_000, 44_123] {
        assert!(matches!(HoldAudio::tone(bad), Err(HoldError::Rate(r)) if r == bad));
    }
    assert!(matches!(HoldAudio::from_samples(vec![0; 319], RATE), Err(HoldError::TooShort { .. })));
}

/// The jump across the loop point is no larger than the largest jump inside the loop.
fn assert_seamless(s: &[i16]) {
    let inner = s.windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max().unwrap_or(0);
    let seam = (i32::from(s[0]) - i32::from(s[s.len() - 1])).abs();
    assert!(seam <= inner, "seam jump {seam} > largest inner jump {inner}");
}

fn write_wav(path: &std::path::Path, spec: hound::WavSpec, frames: usize, f: impl Fn(usize, usize) -> f64) {
    let mut w = hound::WavWriter::create(path, spec).expect("create");
    for i in 0..frames {
        for c in 0..spec.channels as usize {
            let v = f(i, c);
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(v as f32).expect("write"),
                (hound::SampleFormat::Int, 16) => w.write_sample((v * 32767.0) as i16).expect("write"),
                (hound::SampleFormat::Int, bits) => {
                    w.write_sample((v * ((1i64 << (bits - 1)) - 1) as f64) as i32).expect("write")
                }
            }
        }
    }
    w.finalize().expect("finalize");
}

fn zero_crossings(s: &[i16]) -> usize {
    s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
}

#[test]
fn a_stereo_float_file_is_mixed_down_and_resampled_seamlessly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    // 2 s of 441 Hz (a whole number of cycles, so the loop is seamless) on the left, silence right.
    write_wav(&path, spec, 88_200, |i, c| {
        if c == 0 {
            0.8 * (2.0 * std::f64::consts::PI * 441.0 * i as f64 / 44_100.0).sin()
        } else {
            0.0
        }
    });
    let a = HoldAudio::load(&path, RATE).expect("load");
    assert_eq!(a.samples().len(), 32_000);
    assert_eq!(a.gain(), DEFAULT_GAIN);
    let s = a.samples();
    // Mixdown halves the level: peak ≈ 0.4 of full scale.
    let peak = s.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
    assert!((12_500..=13_800).contains(&peak), "peak {peak}");
    // The pitch survived: 441 Hz over 2 s is 1764 zero crossings.
    let zc = zero_crossings(s);
    assert!((1760..=1768).contains(&zc), "{zc} zero crossings");
    assert_seamless(s);
    // 8 kHz works too.
    let a8 = HoldAudio::load(&path, 8_000).expect("load 8k");
    assert_eq!(a8.samples().len(), 16_000);
    assert_seamless(a8.samples());
}

#[test]
fn integer_formats_and_many_channels_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (bits, channels, rate) in [(16u16, 1u16, 16_000u32), (24, 3, 48_000), (8, 8, 8_000), (32, 2, 22_050)] {
        let path = dir.path().join(format!("f{bits}-{channels}.wav"));
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let n = rate as usize / 2;
        write_wav(&path, spec, n, |i, _| 0.5 * (2.0 * std::f64::consts::PI * 400.0 * i as f64 / f64::from(rate)).sin());
        let a = HoldAudio::load(&path, RATE).unwrap_or_else(|e| panic!("{bits}-bit {channels} ch: {e}"));
        assert_eq!(a.samples().len(), 8_000, "{bits}-bit");
        let peak = a.samples().iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
        assert!((15_500..=17_200).contains(&peak), "{bits}-bit peak {peak}");
    }
}

#[test]
fn a_loop_that_does_not_meet_itself_gets_faded_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dc.wav");
    let spec =
        hound::WavSpec { channels: 1, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    // A ramp from -0.5 to +0.5: a full-scale jump at the wrap.
    write_wav(&path, spec, 16_000, |i, _| i as f64 / 16_000.0 - 0.5);
    let a = HoldAudio::load(&path, RATE).expect("load");
    let s = a.samples();
    assert!(s[0].abs() < 100 && s[s.len() - 1].abs() < 100, "{} .. {}", s[0], s[s.len() - 1]);
    assert!(s[8_000].abs() < 100 && s[12_000] > 7_000, "the middle is untouched");
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"RIFF\x10\x00\x00\x00WAVEnot really").expect("write");
    assert!(matches!(HoldAudio::load(&garbage, RATE), Err(HoldError::Read { .. })));
    assert!(matches!(HoldAudio::load(dir.path().join("missing.wav"), RATE), Err(HoldError::Read { .. })));

    let nine = dir.path().join("nine.wav");
    let spec = hound::WavSpec {
        channels: 9,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    write_wav(&nine, spec, 1000, |_, _| 0.0);
    let err = HoldAudio::load(&nine, RATE).expect_err("9 channels");
    assert!(err.to_string().contains("9 channels"), "{err}");

    let fast = dir.path().join("fast.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 96_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    write_wav(&fast, spec, 1000, |_, _| 0.0);
    assert!(matches!(HoldAudio::load(&fast, RATE), Err(HoldError::Unsupported { .. })));

    let tiny = dir.path().join("tiny.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    write_wav(&tiny, spec, 100, |_, _| 0.1);
    assert!(matches!(HoldAudio::load(&tiny, RATE), Err(HoldError::TooShort { .. })));
    assert!(matches!(HoldAudio::load(&tiny, 12_345), Err(HoldError::Rate(12_345))));

    let long = dir.path().join("long.wav");
    let spec =
        hound::WavSpec { channels: 1, sample_rate: 8_000, bits_per_sample: 8, sample_format: hound::SampleFormat::Int };
    write_wav(&long, spec, 8_000 * 601, |_, _| 0.0);
    let err = HoldAudio::load(&long, RATE).expect_err("too long");
    assert!(matches!(err, HoldError::TooLong { .. }), "{err}");
    assert!(err.to_string().contains("601.0 s"), "{err}");
}

#[test]
fn the_shipped_hold_music_is_a_usable_loop() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/audio/hold-music.wav");
    let reader = hound::WavReader::open(path).expect("assets/audio/hold-music.wav");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 16_000, 16));
    let secs = f64::from(reader.duration()) / 16_000.0;
    assert!((6.0..=10.0).contains(&secs), "{secs} s");
    for rate in [16_000, 8_000] {
        let a = HoldAudio::load(path, rate).expect("load");
        assert_seamless(a.samples());
        let peak = a.samples().iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
        assert!((8_000..=24_000).contains(&peak), "peak {peak} at {rate} Hz");
        // No silent stretch: every 100 ms window carries some sound.
        let win = rate as usize / 10;
        for (i, w) in a.samples().chunks_exact(win).enumerate() {
            let rms = (w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / win as f64).sqrt();
            assert!(rms > 500.0, "window {i} at {rate} Hz: rms {rms}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property: any input sequence, at any times, never panics and always ends by
// start + max_hold + after_agent_max when the driver keeps waking at poll_timeout.

#[derive(Debug, Clone)]
enum Op {
    Wait(u64),
    Input(HoldInput),
    Frames,
}

fn op() -> impl Strategy<Value = Op> {
    let ident = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
    prop_oneof![
        4 => (0u64..30_000).prop_map(Op::Wait),
        3 => Just(Op::Frames),
        1 => Just(Op::Input(HoldInput::Start)),
        3 => Just(Op::Input(HoldInput::MessageDone)),
        2 => (0usize..2000).prop_map(|n| Op::Input(HoldInput::MessageAudio(vec![-1; n]))),
        2 => Just(Op::Input(HoldInput::MessageSynthDone)),
        2 => ident.clone().prop_map(|identity| Op::Input(HoldInput::AgentJoined { identity })),
        2 => ident.prop_map(|identity| Op::Input(HoldInput::AgentLeft { identity })),
        1 => Just(Op::Input(HoldInput::CustomerLeft { reason: "x".into() })),
        1 => Just(Op::Input(HoldInput::RoomClosed { reason: "x".into() })),
        1 => Just(Op::Input(HoldInput::EndRequested { reason: "x".into() })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_never_panic_and_always_end_in_time(
        ops in prop::collection::vec(op(), 0..60),
        message in prop::bool::ANY,
        reminder_s in 0u64..20,
        grace_s in 0u64..20,
    ) {
        let c = HoldConfig {
            message: message.then(|| "Please hold.".to_string()),
            reminder_every: secs(reminder_s),
            max_hold: secs(120),
            after_agent_max: secs(300),
            message_timeout: secs(20),
            agent_left_grace: secs(grace_s),
            playout_lead: ms(60),
        };
        let mut h = Hold::new(c, ramp_audio(700));
        let start = secs(1);
        h.handle(start, HoldInput::Start);
        let mut now = start;
        let mut ended_at = None;
        let mut agent_present = false;
        let check = |h: &mut Hold, now: Duration, agent_present: &mut bool, ended_at: &mut Option<Duration>| {
            for a in std::iter::from_fn(|| h.poll_action()) {
                prop_assert!(ended_at.is_none(), "action after End: {a:?}");
                match a {
                    HoldAction::End { at, .. } => *ended_at = Some(at),
                    HoldAction::Event { kind: "agent_joined", .. } => *agent_present = true,
                    _ => {}
                }
            }
            let frames = frames_at(h, now).len();
            prop_assert!(!(*agent_present && frames > 0), "music after an agent joined");
            prop_assert!(frames <= 5, "{frames} frames at once");
            Ok(())
        };
        for op in ops {
            match op {
                Op::Wait(d) => {
                    now += ms(d);
                    h.handle_timeout(now);
                }
                Op::Frames => {}
                Op::Input(i) => h.handle(now, i),
            }
            check(&mut h, now, &mut agent_present, &mut ended_at)?;
        }
        // Then let time run: the hold must end on its own.
        let mut wakeups = 0u64;
        while let Some(t) = h.poll_timeout() {
            prop_assert!(t >= now || t + ms(60) >= now, "timeout {t:?} in the past of {now:?}");
            now = now.max(t);
            h.handle_timeout(now);
            check(&mut h, now, &mut agent_present, &mut ended_at)?;
            wakeups += 1;
            prop_assert!(wakeups < 100_000, "never ends");
        }
        let end = ended_at.expect("ended");
        prop_assert!(h.is_ended());
        prop_assert!(end <= start + secs(120) + secs(300), "ended at {end:?}");
    }
}
