//! The knowledge search client's reading of CXB API's answers (`cxb_knowledge::api`), and the
//! tool result and event the worker builds from the hits.

use std::time::Duration;

use cxb_knowledge::api::{error_detail, parse_response};
use cxb_knowledge::{render_result, retrieval_event, KnowledgeQuery};

/// Header bytes: `top_k`, the score threshold (/255), the result budget (×16 characters) and a
/// mode (odd: a non-2xx answer's body), then the body. The hits obey the query (at most `top_k`,
/// scores in 0..=1 and over the threshold, best first, with text) and the tool result is JSON.
pub fn search_response(data: &[u8]) {
    let [top_k, threshold, budget, mode, body @ ..] = data else { return };
    if mode % 2 == 1 {
        let detail = error_detail(body);
        assert!(detail.chars().count() <= 300, "error detail of {} characters", detail.chars().count());
        return;
    }
    let query = KnowledgeQuery {
        top_k: u32::from(*top_k),
        score_threshold: f64::from(*threshold) / 255.0,
        ..KnowledgeQuery::new("refund policy", vec!["kb_1".into()])
    }
    .bounded();
    let Ok(hits) = parse_response(body, &query) else { return };
    assert!(hits.len() <= query.top_k as usize, "{} hits for top_k {}", hits.len(), query.top_k);
    for hit in &hits {
        assert!(
            (query.score_threshold..=1.0).contains(&hit.score),
            "score {} under {}",
            hit.score,
            query.score_threshold
        );
        assert!(!hit.text.trim().is_empty());
    }
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "hits out of order");
    let result = render_result(&hits, Some("I don't know."), usize::from(*budget) * 16);
    let parsed: serde_json::Value = serde_json::from_str(&result).expect("the tool result is JSON");
    assert!(parsed["results"].as_array().is_some_and(|r| r.len() <= hits.len()));
    let event = retrieval_event(&query, &hits, Duration::from_millis(5), hits.is_empty(), None);
    assert!(event.is_object());
}
