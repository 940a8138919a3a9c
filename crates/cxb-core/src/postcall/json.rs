//! Robust extraction of the JSON object an LLM was asked for.
//!
//! Models wrap JSON in code fences, put prose before or after it, or run out of tokens half-way.
//! This accepts the first three and reports the last as [`ExtractError::Truncated`]; it never
//! repairs or invents content.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the response is empty")]
    Empty,
    #[error("the response has no JSON object")]
    NoObject,
    #[error("the JSON object is cut off (truncated output)")]
    Truncated,
    #[error("the response is JSON but not an object")]
    NotAnObject,
    #[error("the JSON object does not parse: {0}")]
    Invalid(String),
}

/// How many `{` positions are tried before giving up (bounds work on adversarial text).
const MAX_STARTS: usize = 64;

/// The first JSON object in `text`: the whole text, the body of a ```json fence, or the first
/// balanced `{…}` that parses.
pub fn extract_object(text: &str) -> Result<Map<String, Value>, ExtractError> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(ExtractError::Empty);
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return as_object(v);
    }
    if let Some(body) = fenced_body(text) {
        if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
            return as_object(v);
        }
        if let r @ (Ok(_) | Err(ExtractError::Truncated)) = scan(body) {
            return r;
        }
    }
    scan(text)
}

fn as_object(v: Value) -> Result<Map<String, Value>, ExtractError> {
    match v {
        Value::Object(m) => Ok(m),
        // `[{...}]`: a one-object array is what some models emit for "a JSON object".
        Value::Array(mut a) if a.len() == 1 && a[0].is_object() => match a.pop() {
            Some(Value::Object(m)) => Ok(m),
            _ => Err(ExtractError::NotAnObject),
        },
        _ => Err(ExtractError::NotAnObject),
    }
}

/// The content of the first ``` fence (language tag dropped); an unclosed fence runs to the end.
fn fenced_body(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n').map(|i| i + 1).unwrap_or(after.len());
    let tag = after[..body_start].trim();
    // ```{"a":1}``` on one line: no language tag, the JSON starts right away.
    let body = if tag.starts_with('{') { after } else { &after[body_start..] };
    Some(match body.find("```") {
        Some(end) => &body[..end],
        None => body,
    })
}

/// Try each plausible object start (`{` followed by `"` or `}`) in turn: find its balanced end
/// (string-aware) and parse that slice. A plausible start that never closes means the output
/// was cut off: every later `{` lies inside it, so nothing after it is tried (an inner object of
/// a truncated answer must not pass for the answer).
fn scan(text: &str) -> Result<Map<String, Value>, ExtractError> {
    let mut last_err = ExtractError::NoObject;
    let starts = text.char_indices().filter(|&(i, c)| c == '{' && plausible_start(&text[i + 1..]));
    for (start, _) in starts.take(MAX_STARTS) {
        match balanced_end(&text[start..]) {
            Some(len) => match serde_json::from_str::<Value>(&text[start..start + len]) {
                Ok(v) => return as_object(v),
                Err(e) => last_err = ExtractError::Invalid(e.to_string()),
            },
            None => return Err(ExtractError::Truncated),
        }
    }
    Err(last_err)
}

fn plausible_start(rest: &str) -> bool {
    matches!(rest.trim_start().chars().next(), Some('"') | Some('}') | None)
}

/// Byte length of the balanced `{…}` at the start of `s`, or `None` when it never closes.
fn balanced_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Value {
        Value::Object(extract_object(text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
    }

    #[test]
    fn accepts_plain_fenced_and_wrapped_json() {
        let want = json!({"DISPOSITION": "Connected", "n": 1});
        assert_eq!(ok(r#"{"DISPOSITION":"Connected","n":1}"#), want);
        assert_eq!(ok("```json\n{\"DISPOSITION\":\"Connected\",\"n\":1}\n```"), want);
        assert_eq!(ok("```\n{\"DISPOSITION\":\"Connected\",\"n\":1}\n```\n"), want);
        assert_eq!(ok("```{\"DISPOSITION\":\"Connected\",\"n\":1}```"), want);
        assert_eq!(
            ok("Here is the analysis:\n```json\n{\"DISPOSITION\":\"Connected\",\"n\":1}\n```\nLet me know!"),
            want
        );
        assert_eq!(ok("Sure! {\"DISPOSITION\":\"Connected\",\"n\":1} Hope this helps."), want);
        assert_eq!(ok("\u{feff}  {\"DISPOSITION\":\"Connected\",\"n\":1}\n"), want);
        assert_eq!(ok(r#"[{"DISPOSITION":"Connected","n":1}]"#), want);
        // braces inside strings do not confuse the scanner
        assert_eq!(ok(r#"note {x} then {"a":"}{\"","b":[1,{"c":2}]} end"#), json!({"a":"}{\"","b":[1,{"c":2}]}));
    }

    fn ok_prose() -> Value {
        ok(r#"Use {braces carefully. {"a":1}"#)
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert_eq!(extract_object(""), Err(ExtractError::Empty));
        assert_eq!(extract_object("   \n"), Err(ExtractError::Empty));
        assert_eq!(extract_object("I could not analyse this call."), Err(ExtractError::NoObject));
        assert_eq!(extract_object(r#"{"DISPOSITION":"Conn"#), Err(ExtractError::Truncated));
        assert_eq!(extract_object("```json\n{\"summary\":\"The customer said"), Err(ExtractError::Truncated));
        assert_eq!(extract_object("[1,2,3]"), Err(ExtractError::NotAnObject));
        assert_eq!(extract_object("\"just a string\""), Err(ExtractError::NotAnObject));
        assert_eq!(extract_object("{not json at all}"), Err(ExtractError::NoObject));
        assert!(matches!(extract_object(r#"{"a": tru}"#), Err(ExtractError::Invalid(_))));
        // an inner object of a cut-off answer is not the answer
        assert_eq!(extract_object(r#"{"a":{"b":1},"c":"tru"#), Err(ExtractError::Truncated));
        assert_eq!(ok_prose(), json!({"a": 1}));
        for junk in ["}}}}{{{{", "{\"a\":\"\\", "\u{0}\u{1}{", "{[}]", &"{".repeat(10_000), "```", "```json"] {
            assert!(extract_object(junk).is_err(), "{junk:?}");
        }
    }
}
