//! A worker killed mid-call (`kill -9`) loses no call's result: every session that was given a
//! config gets a result after the restart (at least once; a repeat carries the same bytes), the
//! transcript holds every line journaled before the kill, and the recording is a valid WAV.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use cxb_e2e::*;
use rand::Rng;
use serde_json::Value;

/// Transcript texts journaled per session, read from the journals a kill left behind.
fn journaled_lines(data: &Path) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for path in files_ending(&data.join("journal"), ".jsonl") {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let Some(header) = lines.next().and_then(|h| serde_json::from_str::<Value>(h).ok()) else { continue };
        let session = header["session_id"].as_str().unwrap_or_default().to_string();
        let said: Vec<String> = lines
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["t"] == "line")
            .filter_map(|v| v["text"].as_str().map(str::to_string))
            .collect();
        out.insert(session, said);
    }
    out
}

async fn kill_rounds(calls: usize, rounds: usize) {
    let sim = Sim::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    let seed: u64 = rand::rng().random();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let max = (calls * 2).to_string();
    let envs = [("MAX_CONCURRENT_CALLS", max.as_str())];
    let mut journaled: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..rounds {
        let mut worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
        let url = worker.ws_url("demo");
        let kill_after = Duration::from_millis(rng.random_range(200..15_000));
        // Every other round waits for talk first, so kills land both before and after turns.
        let wait_for_talk = round % 2 == 1;
        let dialing = dial_url(&url, &sim, "assets/sim/scenario.json", calls);
        tokio::pin!(dialing);
        let every_call_journaled = async {
            assert!(
                poll_until(Duration::from_secs(30), || async {
                    let journals = journaled_lines(data.path());
                    journals.len() >= calls && (!wait_for_talk || journals.values().all(|l| !l.is_empty()))
                })
                .await,
                "round {round}: all {calls} calls journaled"
            );
            tokio::time::sleep(kill_after).await;
        };
        tokio::select! {
            _ = &mut dialing => {}
            () = every_call_journaled => {}
        }
        worker.proc.kill9();
        let left = journaled_lines(data.path());
        println!(
            "round {round}: killed {kill_after:?} after all calls were journaled; {} journals left, {} lines in them",
            left.len(),
            left.values().map(Vec::len).sum::<usize>()
        );
        journaled.extend(left);
        // Dropping the dialler's future kills it (its calls vanish with the worker).
    }
    let worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
    let given: Vec<String> = sim
        .get("/sim/config-requests")
        .await
        .as_array()
        .expect("config requests")
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["session_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(given.len(), calls * rounds, "every dialled call was given a config");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut by_session: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    while std::time::Instant::now() < deadline {
        by_session.clear();
        for r in sim.results().await {
            by_session.entry(r["session_id"].as_str().unwrap_or_default().to_string()).or_default().push(r);
        }
        if given.iter().all(|s| by_session.contains_key(s)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing: Vec<&String> = given.iter().filter(|s| !by_session.contains_key(*s)).collect();
    assert!(missing.is_empty(), "sessions given a config without a result: {missing:?} (seed {seed})");
    let (mut recovered, mut repeats, mut lines_checked, mut recordings) = (0, 0, 0, 0);
    for (session, results) in &by_session {
        let first = &results[0];
        for again in &results[1..] {
            assert_eq!(again, first, "a repeated delivery carries the same bytes ({session})");
            repeats += 1;
        }
        if first["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == "worker_crashed")) {
            recovered += 1;
            assert_eq!(first["disconnected_by"], "error", "{first:#}");
        }
        let heard: Vec<&str> =
            first["transcript"].as_array().into_iter().flatten().filter_map(|l| l["text"].as_str()).collect();
        for line in journaled.get(session).into_iter().flatten() {
            assert!(heard.contains(&line.as_str()), "journaled line {line:?} missing from {session}: {heard:?}");
            lines_checked += 1;
        }
        if let Some(key) = first["recording_key"].as_str() {
            assert_valid_wav(&data.path().join(key));
            recordings += 1;
        }
    }
    println!(
        "{calls} calls x {rounds} kills (seed {seed}): {} sessions given a config, all with a result; \
         {recovered} recovered from journals, {repeats} repeated deliveries (same bytes), \
         {lines_checked} journaled lines found in transcripts, {recordings} valid recordings",
        given.len()
    );
    assert!(recovered > 0, "some calls were live at a kill");
    assert!(lines_checked > 0, "some turns were journaled before a kill");
    assert!(files_ending(&data.path().join("recordings"), ".part").is_empty(), "every .part repaired");
    assert!(files_ending(&data.path().join("journal"), ".jsonl").is_empty(), "every journal consumed");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ten_calls_twice_loses_no_result() {
    kill_rounds(10, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "50 concurrent calls x 5 kills: run alone (`cargo test -p cxb-e2e --test crash -- --ignored`)"]
async fn kill_9_during_fifty_calls_five_times_loses_no_result() {
    kill_rounds(50, 5).await;
}
