//! The call's `call.*` variables: what custom tool templates (`{{call.caller_id}}`), the Agent
//! Desk handoff and prompt templates can use.

use std::collections::BTreeMap;

use cxb_transports::CallMeta;
use cxb_wire::BotConfig;
use serde_json::Value;

/// Every scalar field of the connected event (numbers and booleans as their JSON text; objects,
/// arrays and nulls left out), then the call's identity, which wins over an event field of the
/// same name.
pub(crate) fn call_variables(cfg: &BotConfig, meta: &CallMeta) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = meta
        .connected_event
        .iter()
        .filter_map(|(name, value)| match value {
            Value::String(s) => Some((name.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Some((name.clone(), value.to_string())),
            _ => None,
        })
        .collect();
    let identity = [
        ("session_id", &cfg.session_id),
        ("bot_id", &cfg.bot_id),
        ("stream_id", &meta.stream_id),
        ("caller_id", &meta.caller_id),
        ("from_number", &meta.caller_id),
        ("did", &meta.did),
        ("call_direction", &meta.call_direction),
    ];
    vars.extend(identity.into_iter().map(|(name, value)| (name.to_string(), value.clone())));
    vars
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn event_scalars_and_the_call_identity() {
        let cfg: BotConfig = serde_json::from_value(json!({"session_id": "s-1", "bot_id": "demo"})).expect("config");
        let event = json!({
            "loan_id": "L-9", "amount": 1200.5, "vip": true, "caller_id": "spoofed",
            "nested": {"a": 1}, "list": [1], "none": null,
        });
        let meta = CallMeta {
            stream_id: "st-1".into(),
            caller_id: "+15550001".into(),
            did: "+15550002".into(),
            call_direction: "inbound".into(),
            connected_event: event.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        };
        let vars = call_variables(&cfg, &meta);
        let expected: BTreeMap<String, String> = [
            ("loan_id", "L-9"),
            ("amount", "1200.5"),
            ("vip", "true"),
            ("caller_id", "+15550001"),
            ("from_number", "+15550001"),
            ("session_id", "s-1"),
            ("bot_id", "demo"),
            ("stream_id", "st-1"),
            ("did", "+15550002"),
            ("call_direction", "inbound"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, expected);
    }
}
