//! `{{call.*}}` and `{{crm.*}}` in a bot's prompt strings.
//!
//! CXB API renders these before Core sees a config, but on the embedded default — and when a
//! dial-out or attach carries `variables` nobody rendered — they would reach the LLM and the
//! caller verbatim. Core renders what remains, once per call, before the conversation starts:
//! `{{call.X}}` from every `connected_event` field (plus the call's identity), `{{crm.X}}` from
//! `connected_event.crm` (where dial-out `variables` land). Whitespace inside the braces is
//! allowed. An unknown variable becomes an empty string and is reported once, so the result can
//! carry an `unrendered_variable` event naming it. Any other `{{…}}` text is left as it is.
//!
//! Only prompt strings are rendered — never provider blocks, and never tool definitions, whose
//! HTTP bindings carry their own `{{args.*}}`/`{{call.*}}` templates rendered per tool call.

use std::collections::{BTreeMap, BTreeSet};

use cxb_wire::BotConfig;
use serde_json::{Map, Value};

/// The values a prompt may reference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptVariables {
    call: BTreeMap<String, String>,
    crm: BTreeMap<String, String>,
}

impl PromptVariables {
    /// `call.*` from the call's variables (connected-event fields and identity); `crm.*` from
    /// the connected event's `crm` object.
    pub fn new(call: impl IntoIterator<Item = (String, String)>, connected_event: &Map<String, Value>) -> Self {
        let crm = match connected_event.get("crm") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), value_text(v))).collect(),
            _ => BTreeMap::new(),
        };
        Self { call: call.into_iter().collect(), crm }
    }

    fn lookup(&self, namespace: &str, name: &str) -> Option<&str> {
        let map = match namespace {
            "call" => &self.call,
            "crm" => &self.crm,
            _ => return None,
        };
        map.get(name).map(String::as_str)
    }
}

/// A JSON value as prompt text: strings verbatim, `null` empty, everything else compact JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Render `text`; names of variables that had no value are added to `unknown` (`call.X`).
pub fn render(text: &str, vars: &PromptVariables, unknown: &mut BTreeSet<String>) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = after[..close].trim();
        match inner.split_once('.') {
            Some((ns @ ("call" | "crm"), name)) if !name.trim().is_empty() && !name.contains(char::is_whitespace) => {
                match vars.lookup(ns, name) {
                    Some(v) => out.push_str(v),
                    None => {
                        unknown.insert(format!("{ns}.{name}"));
                    }
                }
            }
            // Not ours: keep it exactly as written.
            _ => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Render every prompt string of `cfg` in place; returns the unknown variables, sorted.
pub fn render_config(cfg: &mut BotConfig, vars: &PromptVariables) -> Vec<String> {
    let mut unknown = BTreeSet::new();
    let mut r = |s: &mut String| *s = render(s, vars, &mut unknown);
    r(&mut cfg.system_prompt);
    r(&mut cfg.opening_message);
    r(&mut cfg.voicemail_message);
    r(&mut cfg.pre_transfer_message);
    for s in [&mut cfg.post_call_analysis_prompt, &mut cfg.qc_prompt, &mut cfg.silence.dead_air_message] {
        if let Some(s) = s.as_mut() {
            r(s);
        }
    }
    cfg.filler.phrases.iter_mut().for_each(&mut r);
    for v in [&mut cfg.re_engagement, &mut cfg.prompt_parts].into_iter().flatten() {
        render_strings_in(v, vars, &mut unknown);
    }
    unknown.into_iter().collect()
}

/// Render every string inside a JSON value (re-engagement messages, prompt parts).
fn render_strings_in(v: &mut Value, vars: &PromptVariables, unknown: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => *s = render(s, vars, unknown),
        Value::Array(a) => a.iter_mut().for_each(|x| render_strings_in(x, vars, unknown)),
        Value::Object(o) => o.values_mut().for_each(|x| render_strings_in(x, vars, unknown)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> PromptVariables {
        let connected = json!({"callerId": "+919800000001", "crm": {"customer_name": "Rahul Sharma", "due": 1200}});
        let call = [("callerId".to_string(), "+919800000001".to_string()), ("did".into(), "0800".into())];
        PromptVariables::new(call, connected.as_object().unwrap())
    }

    #[test]
    fn call_and_crm_variables_render_with_or_without_inner_spaces() {
        let mut unknown = BTreeSet::new();
        let out = render(
            "Hi {{crm.customer_name}}, you called from {{ call.callerId }} about {{crm.due}}.",
            &vars(),
            &mut unknown,
        );
        assert_eq!(out, "Hi Rahul Sharma, you called from +919800000001 about 1200.");
        assert!(unknown.is_empty());
    }

    #[test]
    fn unknown_variables_become_empty_and_are_reported_once() {
        let mut unknown = BTreeSet::new();
        let out = render("A{{crm.missing}}B{{ crm.missing }}C{{call.nope}}", &vars(), &mut unknown);
        assert_eq!(out, "ABC");
        assert_eq!(unknown.into_iter().collect::<Vec<_>>(), vec!["call.nope".to_string(), "crm.missing".to_string()]);
    }

    #[test]
    fn other_braces_are_left_alone() {
        let mut unknown = BTreeSet::new();
        for text in ["{{args.x}}", "{{ user }}", "{{call}}", "{{call. }}", "open {{ only", "a}} b", "{{{{x}}"] {
            assert_eq!(render(text, &vars(), &mut unknown), text, "{text}");
        }
        assert!(unknown.is_empty());
    }

    #[test]
    fn render_config_touches_prompts_but_not_tools_or_providers() {
        let mut cfg = BotConfig::from_json(
            &serde_json::to_vec(&json!({
                "session_id": "s", "webhook_url": "http://x", "system_prompt": "Customer: {{crm.customer_name}}",
                "opening_message": "Hello {{crm.customer_name}}", "voicemail_message": "Call {{call.did}}",
                "filler": {"phrases": ["One moment {{crm.customer_name}}"]},
                "re_engagement": {"after_seconds": 5, "messages": ["Still there, {{crm.customer_name}}?"]},
                "tools": [{"type": "function", "function": {"name": "t", "description": "{{call.did}}"},
                           "http": {"url": "https://crm/{{call.caller_id}}"}}],
                "llm": {"provider": "openai", "model": "m", "api_key": "{{crm.customer_name}}"}
            }))
            .unwrap(),
        )
        .unwrap();
        let unknown = render_config(&mut cfg, &vars());
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(cfg.system_prompt, "Customer: Rahul Sharma");
        assert_eq!(cfg.opening_message, "Hello Rahul Sharma");
        assert_eq!(cfg.voicemail_message, "Call 0800");
        assert_eq!(cfg.filler.phrases, vec!["One moment Rahul Sharma"]);
        assert_eq!(cfg.re_engagement.unwrap()["messages"][0], "Still there, Rahul Sharma?");
        assert_eq!(cfg.tools[0]["http"]["url"], "https://crm/{{call.caller_id}}");
        assert_eq!(cfg.tools[0]["function"]["description"], "{{call.did}}");
        assert_eq!(cfg.llm.api_key, "{{crm.customer_name}}");
    }
}
