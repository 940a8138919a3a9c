//! Transfer target resolution (contract §4.4): which configured destination a `transfer_call`
//! reaches on a given transport.

use std::collections::BTreeMap;

use crate::config::TransferTarget;

pub const METHOD_WS_REVERSE: &str = "websocket_reverse_transfer";
pub const METHOD_SIP_REFER: &str = "livekit_sip_refer";
pub const METHOD_AGENT_DESK: &str = "agent_desk";

/// A destination the bot can transfer to, after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTransfer {
    /// What the transport primitive receives (number, extension, `sip:`/`tel:` URI, queue).
    pub destination: String,
    /// The target's label (or id, or the legacy map's key) for the results.
    pub target: String,
    pub method: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferTargetError {
    #[error("transfer is not supported on this call")]
    NotSupported,
    #[error("no transfer target matches {requested:?}; available: {available}")]
    NoMatch { requested: String, available: String },
    #[error("no default transfer target is configured; name one of: {available}")]
    NoDefault { available: String },
    #[error("transfer target {target:?} is invalid: {why}")]
    Invalid { target: String, why: String },
}

/// The transfer methods a transport can perform (`_TRANSPORT_METHODS`).
pub fn methods_for_transport(transport: &str) -> &'static [&'static str] {
    match transport {
        "websocket" | "dialler" => &[METHOD_WS_REVERSE],
        "livekit_sip" | "livekit_inbound" | "livekit_outbound" | "attach" => &[METHOD_SIP_REFER, METHOD_AGENT_DESK],
        _ => &[],
    }
}

/// Does the target's `type` suit its `method`, with the URI prefixes the contract requires?
pub fn validate(t: &TransferTarget) -> Result<(), String> {
    let kind = t.kind.as_str();
    let ok_kind = match t.method.as_str() {
        METHOD_SIP_REFER => matches!(kind, "sip_uri" | "tel_uri" | "phone_number"),
        METHOD_AGENT_DESK => kind == "agent_queue",
        METHOD_WS_REVERSE => matches!(kind, "extension" | "phone_number" | "sip_uri" | "tel_uri"),
        other => return Err(format!("unknown method {other:?}")),
    };
    if !ok_kind {
        return Err(format!("type {kind:?} is not valid for method {:?}", t.method));
    }
    if kind == "sip_uri" && !t.value.starts_with("sip:") {
        return Err("a sip_uri must start with sip:".into());
    }
    if kind == "tel_uri" && !t.value.starts_with("tel:") {
        return Err("a tel_uri must start with tel:".into());
    }
    if t.value.trim().is_empty() {
        return Err("empty value".into());
    }
    Ok(())
}

/// The targets a call on `transport` may use: enabled, valid, and of a method it supports.
pub fn usable_targets<'a>(targets: &'a [TransferTarget], transport: &str) -> Vec<&'a TransferTarget> {
    let methods = methods_for_transport(transport);
    targets.iter().filter(|t| t.enabled && methods.contains(&t.method.as_str()) && validate(t).is_ok()).collect()
}

/// What `transfer_call` can reach on a call over one transport: the usable targets and the
/// legacy `transfer_numbers`, with the method those numbers use there. The call driver builds it
/// (it knows the transport); the conversation engine only chooses among it.
#[derive(Debug, Clone)]
pub struct TransferChoices {
    /// Enabled, valid targets of a method the transport supports.
    pub targets: Vec<TransferTarget>,
    /// Legacy name → number map.
    pub numbers: BTreeMap<String, String>,
    /// The transport's first method, which a legacy number is transferred with.
    pub legacy_method: String,
}

impl TransferChoices {
    /// The choices on `transport`; `None` when it cannot transfer at all.
    pub fn for_transport(
        targets: &[TransferTarget],
        numbers: &BTreeMap<String, String>,
        transport: &str,
    ) -> Option<Self> {
        let legacy_method = methods_for_transport(transport).first()?;
        Some(Self {
            targets: usable_targets(targets, transport).into_iter().cloned().collect(),
            numbers: numbers.clone(),
            legacy_method: legacy_method.to_string(),
        })
    }

    /// Can a `transfer_call` possibly succeed?
    pub fn is_available(&self) -> bool {
        !self.targets.is_empty() || !self.numbers.is_empty()
    }

    fn legacy(&self, name: &str, number: &str) -> ResolvedTransfer {
        ResolvedTransfer {
            destination: number.to_string(),
            target: name.to_string(),
            method: self.legacy_method.clone(),
            kind: "phone_number".into(),
        }
    }

    /// `resolve_transfer_target`: a requested id or label (case-insensitive) among the targets,
    /// else the legacy number of that name; with nothing requested, the default target (or the
    /// only one).
    pub fn resolve(&self, requested: Option<&str>) -> Result<ResolvedTransfer, TransferTargetError> {
        let (usable, numbers) = (&self.targets, &self.numbers);
        let available = {
            let mut names: Vec<String> = usable.iter().map(name_of).collect();
            names.extend(numbers.keys().cloned());
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let requested = requested.map(str::trim).filter(|r| !r.is_empty());
        if let Some(req) = requested {
            let lower = req.to_lowercase();
            if let Some(t) = usable.iter().find(|t| {
                t.id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(req)) || t.label.to_lowercase() == lower
            }) {
                return Ok(resolved(t));
            }
            if let Some((name, number)) = numbers.iter().find(|(k, _)| k.to_lowercase() == lower) {
                return Ok(self.legacy(name, number));
            }
            return Err(TransferTargetError::NoMatch { requested: req.to_string(), available });
        }
        if let Some(t) = usable.iter().find(|t| t.is_default) {
            return Ok(resolved(t));
        }
        if usable.len() == 1 && numbers.is_empty() {
            return Ok(resolved(&usable[0]));
        }
        if usable.is_empty() && numbers.len() == 1 {
            let (name, number) = numbers.iter().next().expect("one entry");
            return Ok(self.legacy(name, number));
        }
        Err(TransferTargetError::NoDefault { available })
    }
}

impl ResolvedTransfer {
    /// An Agent Desk handoff: enqueued for an agent rather than performed by the transport, and
    /// the caller stays on the line.
    pub fn is_agent_desk(&self) -> bool {
        self.method == METHOD_AGENT_DESK
    }
}

fn name_of(t: &TransferTarget) -> String {
    if !t.label.trim().is_empty() {
        t.label.clone()
    } else {
        t.id.clone().unwrap_or_else(|| t.value.clone())
    }
}

fn resolved(t: &TransferTarget) -> ResolvedTransfer {
    ResolvedTransfer {
        destination: t.value.clone(),
        target: name_of(t),
        method: t.method.clone(),
        kind: t.kind.clone(),
    }
}

/// [`TransferChoices::resolve`] on `transport`'s choices.
pub fn resolve(
    targets: &[TransferTarget],
    numbers: &BTreeMap<String, String>,
    transport: &str,
    requested: Option<&str>,
) -> Result<ResolvedTransfer, TransferTargetError> {
    TransferChoices::for_transport(targets, numbers, transport)
        .ok_or(TransferTargetError::NotSupported)?
        .resolve(requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(label: &str, method: &str, kind: &str, value: &str, default: bool) -> TransferTarget {
        TransferTarget {
            id: Some(format!("id-{label}")),
            label: label.into(),
            method: method.into(),
            kind: kind.into(),
            value: value.into(),
            is_default: default,
            enabled: true,
        }
    }

    #[test]
    fn requested_by_label_or_id_among_compatible_targets() {
        let targets = vec![
            target("Sales", METHOD_WS_REVERSE, "extension", "2001", false),
            target("Support", METHOD_WS_REVERSE, "phone_number", "+911234", true),
            target("Desk", METHOD_SIP_REFER, "sip_uri", "sip:desk@x", false),
        ];
        let none = BTreeMap::new();
        assert_eq!(resolve(&targets, &none, "websocket", Some("sales")).unwrap().destination, "2001");
        assert_eq!(resolve(&targets, &none, "websocket", Some("id-Support")).unwrap().destination, "+911234");
        assert_eq!(resolve(&targets, &none, "websocket", None).unwrap().target, "Support");
        // Desk is SIP REFER only: not reachable from the dialler WebSocket.
        let err = resolve(&targets, &none, "websocket", Some("Desk")).unwrap_err();
        assert!(matches!(err, TransferTargetError::NoMatch { .. }), "{err}");
        assert!(err.to_string().contains("Sales, Support"));
        assert_eq!(resolve(&targets, &none, "livekit_sip", None).unwrap().destination, "sip:desk@x");
        assert_eq!(resolve(&targets, &none, "exotel", None), Err(TransferTargetError::NotSupported));
    }

    #[test]
    fn disabled_and_invalid_targets_are_skipped_and_legacy_numbers_fall_back() {
        let mut off = target("Off", METHOD_WS_REVERSE, "extension", "1", true);
        off.enabled = false;
        let bad = target("Bad", METHOD_SIP_REFER, "sip_uri", "desk@x", true);
        let numbers = BTreeMap::from([("billing".to_string(), "+915555".to_string())]);
        let r = resolve(&[off.clone(), bad.clone()], &numbers, "websocket", Some("Billing")).unwrap();
        assert_eq!((r.destination.as_str(), r.method.as_str()), ("+915555", METHOD_WS_REVERSE));
        // The only legacy number is the default when nothing else is configured.
        assert_eq!(resolve(&[off], &numbers, "websocket", None).unwrap().target, "billing");
        assert!(validate(&bad).is_err());
        let two = vec![
            target("A", METHOD_WS_REVERSE, "extension", "1", false),
            target("B", METHOD_WS_REVERSE, "extension", "2", false),
        ];
        assert!(matches!(
            resolve(&two, &BTreeMap::new(), "websocket", None),
            Err(TransferTargetError::NoDefault { .. })
        ));
        assert!(validate(&target("T", METHOD_SIP_REFER, "tel_uri", "+91", false)).is_err());
        assert!(validate(&target("Q", METHOD_AGENT_DESK, "phone_number", "+91", false)).is_err());
    }

    #[test]
    fn choices_hold_only_what_the_transport_can_reach() {
        let targets = vec![
            target("Sales", METHOD_WS_REVERSE, "extension", "2001", false),
            target("Queue", METHOD_AGENT_DESK, "agent_queue", "collections", false),
        ];
        let numbers = BTreeMap::from([("billing".to_string(), "+915555".to_string())]);
        let ws = TransferChoices::for_transport(&targets, &numbers, "websocket").unwrap();
        assert_eq!(ws.targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(), ["Sales"]);
        assert_eq!(ws.resolve(Some("billing")).unwrap().method, METHOD_WS_REVERSE);
        let lk = TransferChoices::for_transport(&targets, &BTreeMap::new(), "livekit_sip").unwrap();
        let queue = lk.resolve(None).unwrap();
        assert!(queue.is_agent_desk() && !ws.resolve(Some("Sales")).unwrap().is_agent_desk());
        assert!(TransferChoices::for_transport(&targets, &numbers, "exotel").is_none());
        assert!(!TransferChoices::for_transport(&[], &BTreeMap::new(), "websocket").unwrap().is_available());
    }
}
