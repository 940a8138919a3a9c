//! Small serde helpers shared by the wire types.

use serde::{Deserialize, Deserializer};

/// Deserialize a field whose documented default must also be used when the sender writes an
/// explicit `null` (CXB API serialises unset optional fields as `null`).
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accept a number or a numeric string (telephony providers send every value as a string).
pub fn lenient_u32<'de, D>(d: D) -> Result<Option<u32>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u32),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("not a number: {s:?}")))
        }
    }
}

/// A sample rate as telephony peers label it: `8000`, `"8000"`, `"8000Hz"`, `"8kHz"`, `"16k"`.
/// `None` for anything that is not a positive whole number of hertz (at most 1 MHz).
pub fn parse_sample_rate(label: &str) -> Option<u32> {
    let lower = label.trim().to_ascii_lowercase();
    let no_unit = lower.strip_suffix("hz").unwrap_or(&lower).trim_end();
    let (number, scale) = match no_unit.strip_suffix('k') {
        Some(n) => (n.trim_end(), 1000.0),
        None => (no_unit, 1.0),
    };
    // Digits and at most one decimal point only: f64's parser would also take "inf" or "1e4".
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let hz = number.parse::<f64>().ok()? * scale;
    ((1.0..=1_000_000.0).contains(&hz) && hz.fract() == 0.0).then_some(hz as u32)
}

#[cfg(test)]
mod tests {
    use super::parse_sample_rate;

    #[test]
    fn sample_rate_labels() {
        for (label, want) in [
            ("8000", Some(8000)),
            (" 16000 ", Some(16000)),
            ("8000Hz", Some(8000)),
            ("16 kHz", Some(16000)),
            ("8k", Some(8000)),
            ("22.05kHz", Some(22050)),
            ("0", None),
            ("inf", None),
            ("1e4", None),
            ("-8000", None),
            ("8000.5", None),
            ("fast", None),
            ("", None),
            ("2000000", None),
        ] {
            assert_eq!(parse_sample_rate(label), want, "{label:?}");
        }
    }
}
