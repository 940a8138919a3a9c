//! Built-in tool definitions (OpenAI function format) and the set a call offers the LLM.

use cxb_wire::transfer::TransferChoices;
use serde_json::{json, Value};

use crate::EngineConfig;

/// Name of the built-in tool that ends the call.
pub const END_CALL_TOOL: &str = "end_call";
/// Built-in: the LLM heard an answering machine.
pub const VOICEMAIL_TOOL: &str = "detected_voicemail";
/// Built-in: hand the caller to a configured transfer target.
pub const TRANSFER_TOOL: &str = "transfer_call";
/// Built-in: play DTMF tones to the far end.
pub const SEND_DTMF_TOOL: &str = "send_dtmf";

/// The tools this call offers: the built-ins its config switches on, then the custom tools
/// (which may not shadow a built-in).
pub(crate) fn offered(cfg: &EngineConfig) -> Vec<Value> {
    let mut tools = vec![end_call_tool()];
    if cfg.voicemail_detection {
        tools.push(voicemail_tool());
    }
    if let Some(t) = cfg.transfer.as_ref().filter(|t| t.choices.is_available()) {
        tools.push(transfer_tool(&t.choices));
    }
    if cfg.dtmf_send {
        tools.push(send_dtmf_tool());
    }
    let builtin = [END_CALL_TOOL, VOICEMAIL_TOOL, TRANSFER_TOOL, SEND_DTMF_TOOL];
    for t in &cfg.custom_tools {
        let t = normalise_tool(t);
        let name = t.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
        if !builtin.contains(&name) {
            tools.push(t);
        }
    }
    tools
}

fn end_call_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": END_CALL_TOOL,
            "description": "End the current call. Use it when the conversation is complete or the caller wants to hang up. Say goodbye in final_message.",
            "parameters": {
                "type": "object",
                "properties": {
                    "final_message": {"type": "string", "description": "A short goodbye spoken before hanging up."}
                },
                "required": []
            }
        }
    })
}

fn voicemail_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": VOICEMAIL_TOOL,
            "description": "Call this when you reach an answering machine or voicemail greeting instead of a person.",
            "parameters": {"type": "object", "properties": {}, "required": []}
        }
    })
}

fn transfer_tool(choices: &TransferChoices) -> Value {
    let mut names: Vec<String> = choices.targets.iter().map(|t| t.label.clone()).collect();
    names.extend(choices.numbers.keys().cloned());
    names.retain(|n| !n.trim().is_empty());
    json!({
        "type": "function",
        "function": {
            "name": TRANSFER_TOOL,
            "description": format!(
                "Transfer the caller to a human or another department. Available targets: {}.",
                if names.is_empty() { "the default".to_string() } else { names.join(", ") }
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the caller is being transferred."},
                    "target": {"type": "string", "description": "Target label; omit for the default."}
                },
                "required": ["reason"]
            }
        }
    })
}

fn send_dtmf_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": SEND_DTMF_TOOL,
            "description": "Press keys on the phone keypad (for IVR menus).",
            "parameters": {
                "type": "object",
                "properties": {"digits": {"type": "string", "description": "Keys to press: 0-9, *, #."}},
                "required": ["digits"]
            }
        }
    })
}

/// Accept both `{"type":"function","function":{...}}` and a bare `{"name":..,"parameters":..}`,
/// keeping only what the LLM may see (an HTTP binding's URL and headers stay private).
fn normalise_tool(t: &Value) -> Value {
    let function = match t.get("function") {
        Some(f) => f.clone(),
        None => {
            let mut f = t.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("http");
                o.remove("type");
            }
            f
        }
    };
    json!({"type": "function", "function": function})
}
