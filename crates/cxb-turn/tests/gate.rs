//! TurnGate scenarios in simulated time, and the TurnAudio buffer.

use std::time::Duration;

use cxb_turn::{CloseReason, GateAction, Ticket, TurnAudio, TurnGate, TurnGateConfig};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn gate() -> TurnGate {
    TurnGate::new(TurnGateConfig { threshold: 0.5, max_wait: ms(3000) })
}

fn ticket(action: GateAction) -> Ticket {
    match action {
        GateAction::Predict(t) => t,
        other => panic!("expected Predict, got {other:?}"),
    }
}

#[test]
fn complete_prediction_closes_the_turn_at_once() {
    let mut g = gate();
    assert!(!g.is_turn_open());
    g.on_speech_start(ms(1000));
    assert!(g.is_turn_open() && g.is_speaking());
    let t = ticket(g.on_speech_stop(ms(2500)));
    assert_eq!(g.poll_timeout(), Some(ms(5500)), "bounded even before the model answers");
    assert_eq!(g.on_prediction(t, 0.93, ms(2560)), GateAction::CloseTurn(CloseReason::Complete { probability: 0.93 }));
    assert!(!g.is_turn_open());
    assert_eq!(g.poll_timeout(), None);
}

#[test]
fn incomplete_prediction_waits_then_closes_on_max_wait() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(1000)));
    // The deadline counts from the VAD stop, not from when the prediction arrived.
    assert_eq!(g.on_prediction(t, 0.2, ms(1080)), GateAction::Wait { deadline: ms(4000) });
    assert!(g.is_turn_open() && !g.is_speaking());
    assert_eq!(g.poll_timeout(), Some(ms(4000)));
    assert_eq!(g.handle_timeout(ms(3999)), GateAction::None);
    assert_eq!(g.handle_timeout(ms(4000)), GateAction::CloseTurn(CloseReason::MaxWait));
    assert!(!g.is_turn_open());
    assert_eq!(g.handle_timeout(ms(9000)), GateAction::None, "closes once");
}

#[test]
fn threshold_is_strict_like_pipecat() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(500)));
    assert_eq!(g.on_prediction(t, 0.5, ms(520)), GateAction::Wait { deadline: ms(3500) });
}

#[test]
fn resumed_speech_cancels_the_wait_and_asks_again() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t1 = ticket(g.on_speech_stop(ms(1000)));
    assert!(matches!(g.on_prediction(t1, 0.1, ms(1050)), GateAction::Wait { .. }));
    g.on_speech_start(ms(2000));
    assert_eq!(g.poll_timeout(), None, "speaking: no deadline");
    assert_eq!(g.handle_timeout(ms(4500)), GateAction::None, "the old deadline is gone");
    let t2 = ticket(g.on_speech_stop(ms(5000)));
    assert_ne!(t1, t2);
    assert_eq!(g.poll_timeout(), Some(ms(8000)));
    assert_eq!(g.on_prediction(t2, 0.8, ms(5040)), GateAction::CloseTurn(CloseReason::Complete { probability: 0.8 }));
}

#[test]
fn stale_predictions_are_ignored() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t1 = ticket(g.on_speech_stop(ms(1000)));
    g.on_speech_start(ms(1100)); // caller resumed before the model answered
    assert_eq!(g.on_prediction(t1, 0.99, ms(1150)), GateAction::None);
    assert!(g.is_speaking(), "a stale 'complete' must not close a turn the caller is still in");
    let t2 = ticket(g.on_speech_stop(ms(2000)));
    assert_eq!(g.on_prediction(t1, 0.99, ms(2010)), GateAction::None, "old ticket after a new stop");
    assert!(matches!(g.on_prediction(t2, 0.99, ms(2020)), GateAction::CloseTurn(_)));
    // After the turn closed, late answers do nothing.
    assert_eq!(g.on_prediction(t2, 0.99, ms(2030)), GateAction::None);
    assert_eq!(g.on_prediction_failed(t2, ms(2030)), GateAction::None);
}

#[test]
fn slow_model_cannot_extend_the_turn() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(1000)));
    // The model has not answered by the deadline: silence closes the turn.
    assert_eq!(g.handle_timeout(ms(4000)), GateAction::CloseTurn(CloseReason::MaxWait));
    assert_eq!(g.on_prediction(t, 0.9, ms(4100)), GateAction::None);
}

#[test]
fn late_incomplete_answer_after_the_deadline_closes() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(1000)));
    // The driver had not fired the timer yet when the answer came in past the deadline.
    assert_eq!(g.on_prediction(t, 0.1, ms(4200)), GateAction::CloseTurn(CloseReason::MaxWait));
}

#[test]
fn model_failure_falls_back_to_the_silence_bound() {
    let mut g = gate();
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(1000)));
    assert_eq!(g.on_prediction_failed(t, ms(1010)), GateAction::Wait { deadline: ms(4000) });
    assert_eq!(g.handle_timeout(ms(4000)), GateAction::CloseTurn(CloseReason::MaxWait));
    // A NaN probability (broken model) is "incomplete", never "complete".
    g.on_speech_start(ms(5000));
    let t = ticket(g.on_speech_stop(ms(6000)));
    assert_eq!(g.on_prediction(t, f32::NAN, ms(6010)), GateAction::Wait { deadline: ms(9000) });
}

#[test]
fn stop_without_start_and_reset() {
    let mut g = gate();
    assert_eq!(g.on_speech_stop(ms(100)), GateAction::None);
    assert_eq!(g.handle_timeout(ms(100_000)), GateAction::None);
    g.on_speech_start(ms(200));
    let t = ticket(g.on_speech_stop(ms(300)));
    assert_eq!(g.on_speech_stop(ms(310)), GateAction::None, "a second stop does not re-ask");
    g.reset();
    assert!(!g.is_turn_open());
    assert_eq!(g.poll_timeout(), None);
    assert_eq!(g.on_prediction(t, 0.9, ms(320)), GateAction::None);
}

#[test]
fn zero_max_wait_closes_on_first_incomplete() {
    let mut g = TurnGate::new(TurnGateConfig { threshold: 0.5, max_wait: Duration::ZERO });
    g.on_speech_start(ms(0));
    let t = ticket(g.on_speech_stop(ms(700)));
    assert_eq!(g.on_prediction(t, 0.1, ms(700)), GateAction::CloseTurn(CloseReason::MaxWait));
}

#[test]
fn default_config_is_pipecats() {
    let g = TurnGate::default();
    assert_eq!(g.config().threshold, 0.5);
    assert_eq!(g.config().max_wait, Duration::from_secs(3));
}

const SR: usize = 16_000;
const WINDOW: usize = 8 * SR;

#[test]
fn turn_audio_keeps_only_pre_roll_between_turns() {
    let mut a = TurnAudio::new(ms(500));
    a.push(&vec![0.1; SR * 2]);
    assert_eq!(a.len(), SR / 2);
    assert!(!a.in_turn());
    a.speech_started();
    a.push(&vec![0.2; SR]);
    let mut out = Vec::new();
    a.copy_to(&mut out);
    assert_eq!(out.len(), SR / 2 + SR);
    assert!(out[..SR / 2].iter().all(|&v| v == 0.1) && out[SR / 2..].iter().all(|&v| v == 0.2));
}

#[test]
fn turn_audio_is_bounded_to_the_model_window() {
    let mut a = TurnAudio::new(ms(500));
    a.speech_started();
    for i in 0..1000 {
        a.push(&[i as f32; 320]); // 20 ms frames: 20 s in all
    }
    assert_eq!(a.len(), WINDOW);
    let mut out = Vec::new();
    a.copy_to(&mut out);
    assert_eq!(*out.last().unwrap(), 999.0, "newest audio kept");
    assert_eq!(out[0], (1000 - WINDOW / 320) as f32, "oldest dropped");
    // A single huge push is bounded too.
    a.push(&vec![7.0; 10 * WINDOW]);
    assert_eq!(a.len(), WINDOW);
}

#[test]
fn turn_audio_clear_ends_the_turn() {
    let mut a = TurnAudio::new(ms(100));
    a.speech_started();
    a.push_i16(&[16384; 4000]);
    let mut out = Vec::new();
    a.copy_to(&mut out);
    assert_eq!(out.len(), 4000);
    assert!(out.iter().all(|&v| v == 0.5));
    a.clear();
    assert!(a.is_empty() && !a.in_turn());
    a.push_i16(&[-32768; 4000]);
    assert_eq!(a.len(), SR / 10, "back to the pre-roll bound");
    a.copy_to(&mut out);
    assert!(out.iter().all(|&v| v == -1.0));
}
