//! Config parsing: bindings accepted, defaults and clamps, every error reported, definitions for
//! the LLM stripped of bindings.

use std::time::Duration;

use cxb_tools::{llm_definition, ToolConfigErrorKind, ToolRegistry};
use reqwest::Method;
use serde_json::{json, Value};

fn wrapped(name: &str, http: Value) -> Value {
    json!({"type": "function", "function": {"name": name, "description": "d", "parameters": {"type": "object"}}, "http": http})
}

#[test]
fn accepts_both_forms_with_defaults() {
    let tools = vec![
        wrapped("a", json!({"url": "https://api.example.com/x"})),
        json!({"name": "b", "parameters": {}, "http": {"method": "get", "url": "http://h.example/{{args.id}}"}}),
        // Inside "function" is accepted as well.
        json!({"type": "function", "function": {"name": "c", "http": {"url": "https://h.example/", "method": "DELETE"}}}),
        // No binding: neither registered nor an error.
        json!({"type": "function", "function": {"name": "unbound"}}),
    ];
    let (reg, errors) = ToolRegistry::from_config(&tools);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reg.names().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    assert!(reg.get("unbound").is_none());

    let a = reg.get("a").unwrap();
    assert_eq!(a.name(), "a");
    assert_eq!(a.method(), Method::POST);
    assert_eq!(a.timeout(), Duration::from_millis(5000));
    assert_eq!(a.pre_message(), None);
    assert_eq!(a.pre_message_after(), Duration::from_millis(1500));
    assert_eq!(a.max_response_bytes(), 16384);
    assert_eq!(reg.get("b").unwrap().method(), Method::GET);
    assert_eq!(reg.get("c").unwrap().method(), Method::DELETE);
}

#[test]
fn numeric_fields_are_clamped() {
    let tools = vec![
        wrapped(
            "low",
            json!({"url": "https://h.example/", "timeout_ms": 5, "max_response_bytes": 0, "pre_message": "One moment.",
                   "pre_message_after_ms": 0}),
        ),
        wrapped(
            "high",
            json!({"url": "https://h.example/", "timeout_ms": 10_000_000u64, "max_response_bytes": 50_000_000u64,
                   "pre_message_after_ms": 99_999, "pre_message": "  "}),
        ),
        wrapped("float", json!({"url": "https://h.example/", "timeout_ms": 2500.0})),
    ];
    let (reg, errors) = ToolRegistry::from_config(&tools);
    assert!(errors.is_empty(), "{errors:?}");
    let low = reg.get("low").unwrap();
    assert_eq!(low.timeout(), Duration::from_millis(100));
    assert_eq!(low.max_response_bytes(), 1);
    assert_eq!(low.pre_message(), Some("One moment."));
    assert_eq!(low.pre_message_after(), Duration::ZERO);
    let high = reg.get("high").unwrap();
    assert_eq!(high.timeout(), Duration::from_millis(30_000));
    assert_eq!(high.max_response_bytes(), 1024 * 1024);
    assert_eq!(high.pre_message_after(), Duration::from_millis(30_000));
    // A blank pre-message is no pre-message.
    assert_eq!(high.pre_message(), None);
    assert_eq!(reg.get("float").unwrap().timeout(), Duration::from_millis(2500));
}

#[test]
fn invalid_bindings_are_reported_and_absent() {
    use ToolConfigErrorKind as K;
    let ok = json!({"url": "https://h.example/"});
    type Check = fn(&K) -> bool;
    let cases: Vec<(Value, Check)> = vec![
        (json!("not an object"), |k| *k == K::NotAnObject),
        (json!({"type": "function", "function": "x", "http": ok}), |k| *k == K::InvalidFunction),
        (json!({"type": "function", "function": {"description": "no name"}, "http": ok}), |k| *k == K::MissingName),
        (wrapped("http_string", json!("https://h.example/")), |k| *k == K::HttpNotObject),
        (wrapped("bad_method", json!({"url": "https://h.example/", "method": "FETCH"})), |k| {
            *k == K::InvalidMethod("FETCH".into())
        }),
        (wrapped("method_number", json!({"url": "https://h.example/", "method": 1})), |k| {
            matches!(k, K::InvalidMethod(_))
        }),
        (wrapped("no_url", json!({"method": "GET"})), |k| *k == K::MissingUrl),
        (wrapped("url_number", json!({"url": 5})), |k| *k == K::MissingUrl),
        (wrapped("relative_url", json!({"url": "/orders/{{args.id}}"})), |k| matches!(k, K::InvalidUrl(_))),
        (wrapped("ftp_url", json!({"url": "ftp://h.example/x"})), |k| matches!(k, K::InvalidUrl(_))),
        // Placeholders are values, not URL structure.
        (wrapped("templated_base", json!({"url": "{{call.base}}/orders"})), |k| matches!(k, K::InvalidUrl(_))),
        (
            wrapped("bad_placeholder", json!({"url": "https://h.example/{{order_id}}"})),
            |k| matches!(k, K::InvalidTemplate { field, .. } if field == "http.url"),
        ),
        (
            wrapped("unclosed", json!({"url": "https://h.example/", "body": {"a": ["{{args.x"]}})),
            |k| matches!(k, K::InvalidTemplate { field, .. } if field == "http.body"),
        ),
        (
            wrapped("timeout_string", json!({"url": "https://h.example/", "timeout_ms": "5000"})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.timeout_ms"),
        ),
        (
            wrapped("timeout_negative", json!({"url": "https://h.example/", "timeout_ms": -1})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.timeout_ms"),
        ),
        (
            wrapped("max_bytes_fraction", json!({"url": "https://h.example/", "max_response_bytes": 1.5})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.max_response_bytes"),
        ),
        (
            wrapped("pre_message_number", json!({"url": "https://h.example/", "pre_message": 3})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.pre_message"),
        ),
        (
            wrapped("headers_array", json!({"url": "https://h.example/", "headers": ["a"]})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.headers"),
        ),
        (wrapped("header_name", json!({"url": "https://h.example/", "headers": {"Bad Name": "x"}})), |k| {
            *k == K::InvalidHeaderName("Bad Name".into())
        }),
        (wrapped("header_crlf", json!({"url": "https://h.example/", "headers": {"X-A": "a\r\nX-Evil: 1"}})), |k| {
            *k == K::InvalidHeaderValue("X-A".into())
        }),
        (wrapped("header_forbidden", json!({"url": "https://h.example/", "headers": {"Content-Length": "1"}})), |k| {
            *k == K::ForbiddenHeader("Content-Length".into())
        }),
        (
            wrapped("query_object", json!({"url": "https://h.example/", "query": {"k": {"x": 1}}})),
            |k| matches!(k, K::InvalidField { field, .. } if field == "http.query.k"),
        ),
        (wrapped("get_body", json!({"url": "https://h.example/", "method": "GET", "body": {"a": 1}})), |k| {
            *k == K::BodyWithGet
        }),
        (wrapped("typo", json!({"url": "https://h.example/", "header": {"Authorization": "x"}})), |k| {
            *k == K::UnknownField("header".into())
        }),
        (json!({"type": "function", "function": {"name": "twice", "http": ok}, "http": ok}), |k| {
            *k == K::HttpInTwoPlaces
        }),
    ];
    let mut tools: Vec<Value> = cases.iter().map(|(v, _)| v.clone()).collect();
    // A valid tool among the broken ones, and a later duplicate of it.
    tools.push(wrapped("good", ok.clone()));
    tools.push(wrapped("good", json!({"url": "https://other.example/"})));

    let (reg, errors) = ToolRegistry::from_config(&tools);
    assert_eq!(reg.names().collect::<Vec<_>>(), vec!["good"], "only the valid tool is registered");
    assert_eq!(errors.len(), cases.len() + 1, "{errors:#?}");
    for (i, (_, check)) in cases.iter().enumerate() {
        let e = errors.iter().find(|e| e.index == i).unwrap_or_else(|| panic!("no error for tools[{i}]"));
        assert!(check(&e.kind), "tools[{i}]: unexpected {:?}", e.kind);
    }
    let dup = errors.last().unwrap();
    assert_eq!((dup.index, dup.name.as_deref(), &dup.kind), (cases.len() + 1, Some("good"), &K::DuplicateName));
    // The Display form says where and what.
    let text = errors.iter().find(|e| e.index == 4).unwrap().to_string();
    assert_eq!(text, r#"tools[4] ("bad_method"): invalid method "FETCH" (expected GET, POST, PUT, PATCH or DELETE)"#);
    // The registered duplicate is the first one.
    assert!(format!("{:?}", reg.get("good").unwrap()).contains("\"good\""));
}

#[test]
fn never_panics_on_odd_input() {
    let tools = vec![
        json!(null),
        json!([]),
        json!({}),
        json!({"http": null}),
        json!({"name": "", "http": {}}),
        json!({"name": "x", "http": {"url": "https://h.example/", "timeout_ms": 1e308}}),
        json!({"name": "y", "http": {"url": "https://h.example/", "timeout_ms": f64::MAX}}),
        json!({"name": "z", "http": {"url": "https://[::1", "query": null, "headers": null}}),
    ];
    let (reg, errors) = ToolRegistry::from_config(&tools);
    assert_eq!(reg.names().collect::<Vec<_>>(), vec!["x", "y"]);
    assert_eq!(reg.get("x").unwrap().timeout(), Duration::from_millis(30_000));
    assert!(errors.iter().any(|e| e.index == 0 && e.kind == ToolConfigErrorKind::NotAnObject));
    assert!(errors.iter().any(|e| e.index == 1 && e.kind == ToolConfigErrorKind::NotAnObject));
    // `{}` and `{"http": null}` have no binding: not errors.
    assert!(errors.iter().all(|e| e.index != 2 && e.index != 3), "{errors:?}");
    assert!(errors.iter().any(|e| e.index == 4 && e.kind == ToolConfigErrorKind::MissingName));
    assert!(errors.iter().any(|e| e.index == 7 && matches!(e.kind, ToolConfigErrorKind::InvalidUrl(_))));
    assert_eq!(errors.len(), 4, "{errors:?}");
}

#[test]
fn debug_output_hides_credentials() {
    let tools = vec![wrapped(
        "secret",
        json!({"url": "https://h.example/?key=URLSECRET", "headers": {"Authorization": "Bearer HEADERSECRET"}}),
    )];
    let (reg, _) = ToolRegistry::from_config(&tools);
    let dbg = format!("{:?}", reg);
    assert!(dbg.contains("authorization"), "{dbg}");
    assert!(!dbg.contains("HEADERSECRET") && !dbg.contains("URLSECRET"), "{dbg}");
}

#[test]
fn llm_definition_strips_the_binding() {
    let http = json!({"url": "https://api.example.com/x?key=SECRET", "headers": {"Authorization": "Bearer SECRET"}});
    let function =
        json!({"name": "lookup", "description": "Look up", "parameters": {"type": "object", "properties": {}}});

    let mut wrapped_entry = json!({"type": "function", "function": function.clone(), "http": http.clone()});
    assert_eq!(llm_definition(&wrapped_entry), json!({"type": "function", "function": function.clone()}));

    let mut bare = function.clone();
    bare["http"] = http.clone();
    assert_eq!(llm_definition(&bare), json!({"type": "function", "function": function.clone()}));

    // Binding inside "function", plus unknown top-level keys: all dropped.
    wrapped_entry["function"]["http"] = http.clone();
    wrapped_entry["x-internal"] = json!(1);
    let def = llm_definition(&wrapped_entry);
    assert_eq!(def, json!({"type": "function", "function": function.clone()}));
    assert!(!def.to_string().contains("SECRET"));

    // Entries without a binding come out in the wrapped form, unchanged otherwise.
    assert_eq!(llm_definition(&function), json!({"type": "function", "function": function}));
    assert_eq!(llm_definition(&json!("odd")), json!("odd"));
}
