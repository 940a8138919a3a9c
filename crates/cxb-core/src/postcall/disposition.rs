//! Auto-dispositions and the analysis skip rules (contract §8).
//!
//! Skip LLM analysis when any of these holds: `disconnected_by` ∈ {error, voicemail};
//! `disconnected_by` ∈ {timeout, RNR} and the customer never spoke; the call lasted < 5 s; the
//! customer said nothing (`has_customer_message` false). Calls that never connected
//! (`outside_hours`, `no_answer`, `rejected`) are skipped too. A skipped call's
//! `post_call_analysis` is the auto-disposition dict of the first matching case below.

use std::collections::BTreeMap;
use std::time::Duration;

use cxb_wire::config::AutoDisposition;
use cxb_wire::result::DisconnectedBy;
use serde_json::{Map, Value};

/// Calls shorter than this are not analysed (contract §11).
pub const MIN_ANALYSIS_DURATION: Duration = Duration::from_secs(5);

/// Which auto-disposition applies to a skipped call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCase {
    Error,
    Voicemail,
    OutsideHours,
    NoAnswer,
    Rejected,
    Timeout,
    Rnr,
    NoCustomerMessage,
    ShortCall,
}

impl AutoCase {
    /// The `auto_dispositions` override key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Voicemail => "voicemail",
            Self::OutsideHours => "outside_hours",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Rnr => "rnr",
            Self::NoCustomerMessage => "no_customer_message",
            Self::ShortCall => "short_call",
        }
    }

    /// Built-in `(DISPOSITION, SUB_DISPOSITION, CALLING_REMARKS)`. The first five rows are the
    /// contract's table; `outside_hours`, `no_answer`, `rejected` and `short_call` are our
    /// decisions (proto/README.md).
    pub fn default_disposition(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Rnr | Self::NoCustomerMessage => ("RNR", "RNR", "Customer picked up but did not respond."),
            Self::Voicemail => ("IVR", "MAIN_MESSAGE", "Voicemail or automated system detected."),
            Self::Timeout => ("Not Connected", "DSCN_PARTIAL", "Call exceeded maximum duration."),
            Self::Error => ("Failed", "fallback", "Call ended due to a system error."),
            Self::OutsideHours => ("Not Connected", "OUTSIDE_HOURS", "Bot unavailable or outside its active hours."),
            Self::NoAnswer => ("Not Connected", "NO_ANSWER", "Callee did not answer."),
            Self::Rejected => ("Not Connected", "REJECTED", "Callee rejected the call."),
            Self::ShortCall => ("Not Connected", "DSCN_PARTIAL", "Call ended within 5 seconds."),
        }
    }
}

/// Why analysis is skipped and which disposition applies; `None`: run the analysis.
pub fn skip_case(
    disconnected_by: DisconnectedBy,
    customer_spoke: bool,
    has_customer_message: bool,
    duration: Duration,
) -> Option<(AutoCase, &'static str)> {
    use DisconnectedBy as D;
    match disconnected_by {
        D::Error => return Some((AutoCase::Error, "disconnected_by=error")),
        D::Voicemail => return Some((AutoCase::Voicemail, "disconnected_by=voicemail")),
        D::OutsideHours => return Some((AutoCase::OutsideHours, "call never connected (outside_hours)")),
        D::NoAnswer => return Some((AutoCase::NoAnswer, "call never connected (no_answer)")),
        D::Rejected => return Some((AutoCase::Rejected, "call never connected (rejected)")),
        D::Timeout if !customer_spoke => return Some((AutoCase::Timeout, "timeout and the customer never spoke")),
        D::Rnr if !customer_spoke => return Some((AutoCase::Rnr, "RNR and the customer never spoke")),
        _ => {}
    }
    if !has_customer_message {
        return Some((AutoCase::NoCustomerMessage, "no customer message"));
    }
    if duration < MIN_ANALYSIS_DURATION {
        return Some((AutoCase::ShortCall, "call shorter than 5 s"));
    }
    None
}

fn find_override<'a>(
    overrides: Option<&'a BTreeMap<String, AutoDisposition>>,
    key: &str,
) -> Option<&'a AutoDisposition> {
    let o = overrides?;
    o.get(key).or_else(|| o.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// The auto-disposition dict `{DISPOSITION, SUB_DISPOSITION, CALLING_REMARKS}` for `case`:
/// the bot's override for the case (only `DISPOSITION` required, the other two default to the
/// case's built-in values) or the built-in row. `no_customer_message` without an override of
/// its own uses the bot's `rnr` override ("uses the RNR disposition").
pub fn disposition(case: AutoCase, overrides: Option<&BTreeMap<String, AutoDisposition>>) -> Map<String, Value> {
    let (d, sd, cr) = case.default_disposition();
    let ov = find_override(overrides, case.key()).or_else(|| match case {
        AutoCase::NoCustomerMessage => find_override(overrides, AutoCase::Rnr.key()),
        _ => None,
    });
    let (d, sd, cr) = match ov {
        Some(o) => (
            o.disposition.clone(),
            o.sub_disposition.clone().unwrap_or_else(|| sd.to_string()),
            o.calling_remarks.clone().unwrap_or_else(|| cr.to_string()),
        ),
        None => (d.to_string(), sd.to_string(), cr.to_string()),
    };
    let mut m = Map::new();
    m.insert("DISPOSITION".into(), Value::String(d));
    m.insert("SUB_DISPOSITION".into(), Value::String(sd));
    m.insert("CALLING_REMARKS".into(), Value::String(cr));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(30);

    #[test]
    fn skip_rules() {
        use DisconnectedBy as D;
        // error / voicemail always, even with a conversation
        assert_eq!(skip_case(D::Error, true, true, S).unwrap().0, AutoCase::Error);
        assert_eq!(skip_case(D::Voicemail, true, true, S).unwrap().0, AutoCase::Voicemail);
        // timeout / RNR only when the customer never spoke
        assert_eq!(skip_case(D::Timeout, false, false, S).unwrap().0, AutoCase::Timeout);
        assert_eq!(skip_case(D::Timeout, true, true, S), None);
        assert_eq!(skip_case(D::Rnr, false, false, S).unwrap().0, AutoCase::Rnr);
        assert_eq!(skip_case(D::Rnr, true, true, S), None);
        // no customer message
        assert_eq!(skip_case(D::Customer, false, false, S).unwrap().0, AutoCase::NoCustomerMessage);
        assert_eq!(skip_case(D::Bot, true, false, S).unwrap().0, AutoCase::NoCustomerMessage);
        // shorter than 5 s
        assert_eq!(skip_case(D::Customer, true, true, Duration::from_millis(4999)).unwrap().0, AutoCase::ShortCall);
        assert_eq!(skip_case(D::Customer, true, true, Duration::from_secs(5)), None);
        // never connected
        assert_eq!(skip_case(D::NoAnswer, false, false, S).unwrap().0, AutoCase::NoAnswer);
        assert_eq!(skip_case(D::Rejected, false, false, S).unwrap().0, AutoCase::Rejected);
        assert_eq!(skip_case(D::OutsideHours, false, false, S).unwrap().0, AutoCase::OutsideHours);
        // normal calls run the analysis
        assert_eq!(skip_case(D::Bot, true, true, S), None);
        assert_eq!(skip_case(D::TransferToAgent, true, true, S), None);
    }

    fn triple(m: &Map<String, Value>) -> (String, String, String) {
        let g = |k: &str| m[k].as_str().unwrap().to_string();
        (g("DISPOSITION"), g("SUB_DISPOSITION"), g("CALLING_REMARKS"))
    }

    #[test]
    fn default_table_is_the_contracts() {
        let t = |c| triple(&disposition(c, None));
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(t(AutoCase::Rnr), s("RNR", "RNR", "Customer picked up but did not respond."));
        assert_eq!(t(AutoCase::Voicemail), s("IVR", "MAIN_MESSAGE", "Voicemail or automated system detected."));
        assert_eq!(t(AutoCase::Timeout), s("Not Connected", "DSCN_PARTIAL", "Call exceeded maximum duration."));
        assert_eq!(t(AutoCase::Error), s("Failed", "fallback", "Call ended due to a system error."));
        assert_eq!(t(AutoCase::NoCustomerMessage), t(AutoCase::Rnr));
    }

    #[test]
    fn overrides_need_only_disposition_and_no_customer_message_follows_rnr() {
        let overrides: BTreeMap<String, AutoDisposition> = serde_json::from_value(serde_json::json!({
            "timeout": {"DISPOSITION": "Timed Out"},
            "RNR": {"DISPOSITION": "Silent", "SUB_DISPOSITION": "SILENT", "CALLING_REMARKS": "quiet"},
            "voicemail": {"DISPOSITION": "VM", "CALLING_REMARKS": "machine"},
        }))
        .unwrap();
        let t = |c| triple(&disposition(c, Some(&overrides)));
        assert_eq!(
            t(AutoCase::Timeout),
            ("Timed Out".into(), "DSCN_PARTIAL".into(), "Call exceeded maximum duration.".into())
        );
        assert_eq!(t(AutoCase::Voicemail), ("VM".into(), "MAIN_MESSAGE".into(), "machine".into()));
        assert_eq!(t(AutoCase::Rnr), ("Silent".into(), "SILENT".into(), "quiet".into()));
        assert_eq!(t(AutoCase::NoCustomerMessage), t(AutoCase::Rnr));
        assert_eq!(
            t(AutoCase::Error),
            ("Failed".into(), "fallback".into(), "Call ended due to a system error.".into())
        );
        let own: BTreeMap<String, AutoDisposition> = serde_json::from_value(
            serde_json::json!({"rnr": {"DISPOSITION": "R"}, "no_customer_message": {"DISPOSITION": "N"}}),
        )
        .unwrap();
        assert_eq!(disposition(AutoCase::NoCustomerMessage, Some(&own))["DISPOSITION"], "N");
    }
}
