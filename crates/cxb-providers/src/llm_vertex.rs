//! Gemini on Vertex AI (`google_vertex`; wire-protocols part 2 §3): the Gemini body and stream of
//! [`crate::llm_gemini`], at `POST {root}/v1/projects/{project}/locations/{location}/publishers/
//! google/models/{model}:streamGenerateContent?alt=sse` with `Authorization: Bearer` from a
//! service account ([`crate::google_auth`]).
//!
//! Config: `llm.extra.project_id` (required), `llm.extra.location` (default `global`, the only
//! location serving the Gemini 3 series; regional ones serve 2.5), the key JSON in `llm.api_key`
//! or the file named by `GOOGLE_APPLICATION_CREDENTIALS`. `base_url` overrides the root the
//! location selects.

use cxb_wire::llm::ChatRequest;
use serde_json::Value;
use url::Url;

use crate::llm::LlmParams;
use crate::llm_gemini::{bare_model, join_segments, parse_root, Endpoint, Flavour, GoogleAuth, GoogleShared};
use crate::ProviderError;

pub const DEFAULT_LOCATION: &str = "global";
const PROVIDER: &str = crate::registry::GOOGLE_VERTEX.name;

fn config(detail: String) -> ProviderError {
    ProviderError::Config { provider: PROVIDER, detail }
}

/// A string setting of `llm.extra`.
fn extra_str<'a>(req: &'a ChatRequest, key: &str) -> Option<&'a str> {
    req.extra.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The request's Vertex endpoint: project, location, root, and the account's token source.
pub(crate) async fn endpoint(
    params: &LlmParams,
    req: &ChatRequest,
    shared: &GoogleShared,
) -> Result<Endpoint, ProviderError> {
    let project = extra_str(req, "project_id").ok_or_else(|| config("llm.extra.project_id is required".into()))?;
    // Project ids: lower-case letters, digits, hyphens; legacy domain-scoped ones add `.` and `:`.
    if project.len() > 100
        || !project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c))
    {
        return Err(config(format!("llm.extra.project_id {project:?} is not a Google Cloud project id")));
    }
    let location = extra_str(req, "location").unwrap_or(DEFAULT_LOCATION);
    // The location becomes part of a host name: nothing but a region name may pass.
    if location.len() > 40 || !location.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(config(format!("llm.extra.location {location:?} is not a Vertex AI location")));
    }
    let root = parse_root(PROVIDER, &params.base_url, &default_root(location))?;
    let source = shared.tokens.source(&params.api_key).await.map_err(|e| config(e.to_string()))?;
    let model = bare_model(&req.model).to_string();
    let parent = ["projects", project, "locations", location];
    let version = |rest: &[&str]| -> Url {
        let segments: Vec<&str> = std::iter::once("v1").chain(parent).chain(rest.iter().copied()).collect();
        join_segments(&root, &segments)
    };
    let mut stream_url = version(&["publishers", "google", "models", &format!("{model}:streamGenerateContent")]);
    stream_url.set_query(Some("alt=sse"));
    Ok(Endpoint {
        flavour: Flavour::Vertex,
        stream_url,
        caches_url: version(&["cachedContents"]),
        resource_root: join_segments(&root, &["v1"]),
        model_resource: format!("projects/{project}/locations/{location}/publishers/google/models/{model}"),
        scope: format!("{root}|{project}|{location}|{}", source.client_email()),
        auth: GoogleAuth::Bearer(source),
        model,
    })
}

/// The API root for a location (python-genai's selection).
pub fn default_root(location: &str) -> String {
    match location {
        "global" => "https://aiplatform.googleapis.com".into(),
        "us" | "eu" => format!("https://aiplatform.{location}.rep.googleapis.com"),
        region => format!("https://{region}-aiplatform.googleapis.com"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_by_location() {
        assert_eq!(default_root("global"), "https://aiplatform.googleapis.com");
        assert_eq!(default_root("eu"), "https://aiplatform.eu.rep.googleapis.com");
        assert_eq!(default_root("asia-south1"), "https://asia-south1-aiplatform.googleapis.com");
    }
}
