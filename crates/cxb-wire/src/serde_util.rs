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
