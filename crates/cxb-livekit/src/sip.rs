//! SIP rules the worker applies around LiveKit SIP: how a failed dial-out is classified, how a
//! number to dial is normalised, and how a transfer target becomes a REFER `Refer-To` value.
//!
//! All of it is pure (no I/O, no clock) so call logic can apply and test it directly.

use std::fmt;

/// How a dial-out that did not connect ended, as reported in `disconnected_by` (contract §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SipOutcome {
    /// 408 Request Timeout / 480 Temporarily Unavailable: the callee did not pick up.
    NoAnswer,
    /// 486 Busy Here / 603 Decline: the callee (or their network) refused the call.
    Rejected,
    /// Anything else: trunk, routing or server failure.
    Error,
}

impl SipOutcome {
    /// The project's mapping of a final SIP status (wire-protocols §6c).
    pub fn from_status(status: u16) -> Self {
        match status {
            408 | 480 => SipOutcome::NoAnswer,
            486 | 603 => SipOutcome::Rejected,
            _ => SipOutcome::Error,
        }
    }

    /// The `disconnected_by` value written to the results payload.
    pub fn as_disconnected_by(self) -> &'static str {
        match self {
            SipOutcome::NoAnswer => "no_answer",
            SipOutcome::Rejected => "rejected",
            SipOutcome::Error => "error",
        }
    }
}

impl fmt::Display for SipOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_disconnected_by())
    }
}

/// Fewest digits accepted in a number to dial. Shorter strings are extensions or typos, and a
/// trunk would reject them after the caller had already been told the call was placed.
pub const MIN_PHONE_DIGITS: usize = 7;
/// ITU-T E.164: at most 15 digits, country code included.
pub const MAX_PHONE_DIGITS: usize = 15;

/// A number or transfer destination that cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the phone number is empty")]
    Empty,
    #[error("the phone number contains {0:?}, which is not a digit, '+' or a separator")]
    InvalidCharacter(char),
    #[error("'+' may only appear at the start of a phone number")]
    MisplacedPlus,
    #[error("the phone number has {0} digits; at least {MIN_PHONE_DIGITS} are needed")]
    TooShort(usize),
    #[error("the phone number has {0} digits; E.164 allows at most {MAX_PHONE_DIGITS}")]
    TooLong(usize),
    #[error("the default country code {0:?} is not '+' followed by 1-3 digits")]
    InvalidCountryCode(String),
    #[error("{0:?} is a national number (leading 0) and no default country code is configured")]
    NationalWithoutCountryCode(String),
}

/// Normalise a number for LiveKit `CreateSIPParticipant.sip_call_to`.
///
/// Rules, in order:
/// 1. Surrounding whitespace is trimmed; spaces (any Unicode whitespace), `-`, `.`, `(` and `)`
///    inside are visual separators and removed.
/// 2. What remains must be digits with an optional single leading `+`; letters or any other
///    character (`*`, `#`, `/`, `,` …) are rejected, as is an empty string.
/// 3. A leading `+` is kept: the number is already international (E.164).
/// 4. A leading `00` (the international access prefix) becomes `+`.
/// 5. Otherwise, when `default_country_code` is given (`"+91"` or `"91"`):
///    - a single leading `0` is the national trunk prefix: it is dropped and the country code
///      prefixed (`09876543210` → `+919876543210`);
///    - a number longer than 10 digits that already starts with the country code gets only the
///      `+` (`919876543210` → `+919876543210`, contract §6.4: `91XXXXXXXXXX` → `+91…`);
///    - any other number gets the country code (`9876543210` → `+919876543210`).
/// 6. Otherwise the digits are kept as they are (contract §6.4 keeps `0…` numbers), and the
///    outbound trunk's dial plan decides what they mean.
/// 7. The result must have between [`MIN_PHONE_DIGITS`] and [`MAX_PHONE_DIGITS`] digits.
pub fn normalize_dial_number(input: &str, default_country_code: Option<&str>) -> Result<String, PhoneError> {
    let country = default_country_code.map(parse_country_code).transpose()?;
    let (plus, digits) = split_number(input)?;
    let normalized = if plus {
        format!("+{digits}")
    } else if let Some(rest) = digits.strip_prefix("00") {
        format!("+{rest}")
    } else if let Some(cc) = country {
        if let Some(national) = digits.strip_prefix('0') {
            format!("+{cc}{national}")
        } else if digits.len() > 10 && digits.starts_with(cc) {
            format!("+{digits}")
        } else {
            format!("+{cc}{digits}")
        }
    } else {
        digits
    };
    check_length(&normalized)?;
    Ok(normalized)
}

/// The `"+91"`/`"91"` setting as its digits.
fn parse_country_code(cc: &str) -> Result<&str, PhoneError> {
    let trimmed = cc.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    // Country codes are 1-3 digits and never start with 0.
    if (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0') {
        Ok(digits)
    } else {
        Err(PhoneError::InvalidCountryCode(cc.to_string()))
    }
}

/// Strip separators; returns whether the number had a leading `+`, and its digits.
fn split_number(input: &str) -> Result<(bool, String), PhoneError> {
    let trimmed = input.trim();
    let mut plus = false;
    let mut digits = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if digits.is_empty() && !plus => plus = true,
            '+' => return Err(PhoneError::MisplacedPlus),
            '-' | '.' | '(' | ')' => {}
            c if c.is_whitespace() => {}
            other => return Err(PhoneError::InvalidCharacter(other)),
        }
    }
    if digits.is_empty() {
        return Err(PhoneError::Empty);
    }
    Ok((plus, digits))
}

fn check_length(number: &str) -> Result<(), PhoneError> {
    let n = number.bytes().filter(u8::is_ascii_digit).count();
    if n < MIN_PHONE_DIGITS {
        Err(PhoneError::TooShort(n))
    } else if n > MAX_PHONE_DIGITS {
        Err(PhoneError::TooLong(n))
    } else {
        Ok(())
    }
}

/// Why a transfer target cannot be sent as a SIP REFER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferDestinationError {
    #[error("transfer type {0:?} cannot be used with a SIP REFER (use sip_uri, tel_uri or phone_number)")]
    UnsupportedType(String),
    #[error("a sip_uri transfer target must start with \"sip:\"")]
    NotSipUri,
    #[error("a tel_uri transfer target must start with \"tel:\"")]
    NotTelUri,
    #[error("the transfer target has nothing after its scheme")]
    EmptyUri,
    #[error("the transfer target contains whitespace or a control character")]
    InvalidUriCharacter,
    #[error("phone_number transfer target: {0}")]
    Phone(#[from] PhoneError),
}

/// The `transfer_to` value for `TransferSIPParticipant` from a transfer target's `type` and
/// `value` (contract §4.4, method `livekit_sip_refer`).
///
/// - `sip_uri`: must start with `sip:`; passed through unchanged.
/// - `tel_uri`: must start with `tel:`; passed through unchanged.
/// - `phone_number`: normalised as in [`normalize_dial_number`] (with the same default country
///   code) and sent as `tel:+<digits>`. A number without `+`, `00` or a country code is taken to
///   carry its country code already (`919876543210` → `tel:+919876543210`); a national number with
///   a leading `0` and no configured country code cannot be made international and is rejected.
/// - Any other type (`extension`, `agent_queue`, …) is an error.
///
/// URIs must not contain whitespace or control characters: the value ends up in a SIP header
/// (`Refer-To`), where a CR/LF would inject headers.
pub fn transfer_destination(
    kind: &str,
    value: &str,
    default_country_code: Option<&str>,
) -> Result<String, TransferDestinationError> {
    let value = value.trim();
    match kind {
        "sip_uri" => checked_uri(value, "sip:", TransferDestinationError::NotSipUri),
        "tel_uri" => checked_uri(value, "tel:", TransferDestinationError::NotTelUri),
        "phone_number" => {
            let number = normalize_dial_number(value, default_country_code)?;
            if number.starts_with('+') {
                Ok(format!("tel:{number}"))
            } else if number.starts_with('0') {
                Err(PhoneError::NationalWithoutCountryCode(value.to_string()).into())
            } else {
                Ok(format!("tel:+{number}"))
            }
        }
        other => Err(TransferDestinationError::UnsupportedType(other.to_string())),
    }
}

fn checked_uri(
    value: &str,
    scheme: &str,
    wrong_scheme: TransferDestinationError,
) -> Result<String, TransferDestinationError> {
    let Some(rest) = value.strip_prefix(scheme) else {
        return Err(wrong_scheme);
    };
    if rest.is_empty() {
        return Err(TransferDestinationError::EmptyUri);
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TransferDestinationError::InvalidUriCharacter);
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_status_mapping() {
        assert_eq!(SipOutcome::from_status(408), SipOutcome::NoAnswer);
        assert_eq!(SipOutcome::from_status(480), SipOutcome::NoAnswer);
        assert_eq!(SipOutcome::from_status(486), SipOutcome::Rejected);
        assert_eq!(SipOutcome::from_status(603), SipOutcome::Rejected);
        for other in [0, 200, 403, 404, 487, 500, 503, 600] {
            assert_eq!(SipOutcome::from_status(other), SipOutcome::Error, "{other}");
        }
        assert_eq!(SipOutcome::NoAnswer.as_disconnected_by(), "no_answer");
        assert_eq!(SipOutcome::Rejected.as_disconnected_by(), "rejected");
        assert_eq!(SipOutcome::Error.as_disconnected_by(), "error");
        assert_eq!(SipOutcome::Rejected.to_string(), "rejected");
    }

    #[test]
    fn keeps_international_numbers_and_strips_separators() {
        assert_eq!(normalize_dial_number("+919876543210", None).unwrap(), "+919876543210");
        assert_eq!(normalize_dial_number(" +91 98765-43210 ", None).unwrap(), "+919876543210");
        assert_eq!(normalize_dial_number("+1 (212) 555.1234", Some("+91")).unwrap(), "+12125551234");
        assert_eq!(normalize_dial_number("+44\u{a0}7911\t123456", None).unwrap(), "+447911123456");
    }

    #[test]
    fn double_zero_becomes_plus() {
        assert_eq!(normalize_dial_number("00919876543210", None).unwrap(), "+919876543210");
        assert_eq!(normalize_dial_number("00 44 7911 123456", Some("+91")).unwrap(), "+447911123456");
    }

    #[test]
    fn default_country_code_rules() {
        // 10-digit Indian mobile.
        assert_eq!(normalize_dial_number("9876543210", Some("+91")).unwrap(), "+919876543210");
        assert_eq!(normalize_dial_number("98765 43210", Some("91")).unwrap(), "+919876543210");
        // Trunk prefix 0 is dropped.
        assert_eq!(normalize_dial_number("09876543210", Some("+91")).unwrap(), "+919876543210");
        // Country code already present (contract: 91XXXXXXXXXX → +91…).
        assert_eq!(normalize_dial_number("919876543210", Some("+91")).unwrap(), "+919876543210");
        // A 10-digit mobile that happens to start with 91 is national, not prefixed.
        assert_eq!(normalize_dial_number("9123456789", Some("+91")).unwrap(), "+919123456789");
        assert_eq!(normalize_dial_number("2125551234", Some("+1")).unwrap(), "+12125551234");
        assert_eq!(normalize_dial_number("12125551234", Some("+1")).unwrap(), "+12125551234");
    }

    #[test]
    fn without_country_code_digits_are_kept() {
        assert_eq!(normalize_dial_number("09876543210", None).unwrap(), "09876543210");
        assert_eq!(normalize_dial_number("919876543210", None).unwrap(), "919876543210");
        assert_eq!(normalize_dial_number("98765-43210", None).unwrap(), "9876543210");
    }

    #[test]
    fn rejects_bad_numbers() {
        assert_eq!(normalize_dial_number("", None), Err(PhoneError::Empty));
        assert_eq!(normalize_dial_number("  - ( ) ", None), Err(PhoneError::Empty));
        assert_eq!(normalize_dial_number("+", None), Err(PhoneError::Empty));
        assert_eq!(normalize_dial_number("98765abc10", None), Err(PhoneError::InvalidCharacter('a')));
        assert_eq!(normalize_dial_number("tel:+919876543210", None), Err(PhoneError::InvalidCharacter('t')));
        assert_eq!(normalize_dial_number("9876*43210", None), Err(PhoneError::InvalidCharacter('*')));
        assert_eq!(normalize_dial_number("91+9876543210", None), Err(PhoneError::MisplacedPlus));
        assert_eq!(normalize_dial_number("++919876543210", None), Err(PhoneError::MisplacedPlus));
        assert_eq!(normalize_dial_number("12345", None), Err(PhoneError::TooShort(5)));
        assert_eq!(normalize_dial_number("+123456", None), Err(PhoneError::TooShort(6)));
        assert_eq!(normalize_dial_number("+1234567890123456", None), Err(PhoneError::TooLong(16)));
        // The country code counts towards the 15 digits.
        assert_eq!(normalize_dial_number("1234567890123", Some("+91")).unwrap(), "+911234567890123");
        assert_eq!(normalize_dial_number("12345678901234", Some("+91")), Err(PhoneError::TooLong(16)));
        assert_eq!(
            normalize_dial_number("9876543210", Some("+091")),
            Err(PhoneError::InvalidCountryCode("+091".into()))
        );
        assert_eq!(normalize_dial_number("9876543210", Some("IN")), Err(PhoneError::InvalidCountryCode("IN".into())));
    }

    #[test]
    fn transfer_destinations() {
        assert_eq!(
            transfer_destination("sip_uri", "sip:agent@pbx.example.com", None).unwrap(),
            "sip:agent@pbx.example.com"
        );
        assert_eq!(transfer_destination("tel_uri", " tel:+919876543210 ", None).unwrap(), "tel:+919876543210");
        assert_eq!(transfer_destination("phone_number", "+91 98765 43210", None).unwrap(), "tel:+919876543210");
        assert_eq!(transfer_destination("phone_number", "919876543210", None).unwrap(), "tel:+919876543210");
        assert_eq!(transfer_destination("phone_number", "9876543210", Some("+91")).unwrap(), "tel:+919876543210");
        assert_eq!(transfer_destination("phone_number", "0044 20 7946 0958", None).unwrap(), "tel:+442079460958");
    }

    #[test]
    fn transfer_destination_errors() {
        assert_eq!(transfer_destination("sip_uri", "agent@pbx", None), Err(TransferDestinationError::NotSipUri));
        assert_eq!(transfer_destination("sip_uri", "tel:+9198", None), Err(TransferDestinationError::NotSipUri));
        assert_eq!(transfer_destination("sip_uri", "sip:", None), Err(TransferDestinationError::EmptyUri));
        assert_eq!(
            transfer_destination("sip_uri", "sip:a@b\r\nX-Evil: 1", None),
            Err(TransferDestinationError::InvalidUriCharacter)
        );
        assert_eq!(transfer_destination("tel_uri", "+919876543210", None), Err(TransferDestinationError::NotTelUri));
        assert_eq!(
            transfer_destination("phone_number", "sip:a@b", None),
            Err(TransferDestinationError::Phone(PhoneError::InvalidCharacter('s')))
        );
        assert_eq!(
            transfer_destination("phone_number", "09876543210", None),
            Err(TransferDestinationError::Phone(PhoneError::NationalWithoutCountryCode("09876543210".into())))
        );
        assert_eq!(
            transfer_destination("extension", "1001", None),
            Err(TransferDestinationError::UnsupportedType("extension".into()))
        );
        assert_eq!(
            transfer_destination("agent_queue", "sales", None),
            Err(TransferDestinationError::UnsupportedType("agent_queue".into()))
        );
    }
}
