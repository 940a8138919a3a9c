//! The shared internal secret (contract §2.1, §13.2): accept either header spelling inbound,
//! compared in constant time; send both outbound.

use http::HeaderMap;
use subtle::ConstantTimeEq;

pub const HEADER_A: &str = "X-CXBCore-Secret";
pub const HEADER_B: &str = "X-CXB-Core-Secret";

/// True when no secret is configured, or either header carries it.
pub fn authorized(headers: &HeaderMap, secret: Option<&str>) -> bool {
    let Some(secret) = secret else { return true };
    [HEADER_A, HEADER_B].iter().any(|h| {
        headers
            .get(*h)
            .is_some_and(|v| v.as_bytes().len() == secret.len() && bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
    })
}

/// Add both secret headers to an outbound request.
pub fn with_secret(req: reqwest::RequestBuilder, secret: Option<&str>) -> reqwest::RequestBuilder {
    match secret {
        Some(s) => req.header(HEADER_A, s).header(HEADER_B, s),
        None => req,
    }
}

/// Both secret headers as pairs (for stored outbox requests).
pub fn secret_headers(secret: Option<&str>) -> Vec<(String, String)> {
    secret
        .map(|s| vec![(HEADER_A.to_string(), s.to_string()), (HEADER_B.to_string(), s.to_string())])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_spelling_is_accepted_and_wrong_values_are_not() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, Some("s3cret")));
        assert!(authorized(&h, None));
        h.insert("x-cxb-core-secret", "s3cret".parse().unwrap());
        assert!(authorized(&h, Some("s3cret")));
        let mut h = HeaderMap::new();
        h.insert("x-cxbcore-secret", "s3cre".parse().unwrap());
        assert!(!authorized(&h, Some("s3cret")));
        h.insert("x-cxbcore-secret", "s3cret".parse().unwrap());
        assert!(authorized(&h, Some("s3cret")));
    }
}
