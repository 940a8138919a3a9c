//! The `{{args.…}}` / `{{call.…}}` template engine used by HTTP bindings.
//!
//! Templates are compiled once, when the bot config is loaded, so that a malformed placeholder is a
//! config error reported up front rather than a surprise in the middle of a call. Rendering is done
//! per tool call, against the LLM's arguments and the call's variables, in one of three contexts:
//!
//! * **URL** ([`Template::render_url`]): substituted values are percent-encoded (everything except
//!   RFC 3986 unreserved characters), so an argument can never add a path segment, a query
//!   parameter or change the host. A value of exactly `.` or `..` in the path is refused because
//!   URL parsers resolve such segments even when percent-encoded.
//! * **Text** ([`Template::render_text`]): values are inserted verbatim (query values, header
//!   values; the caller checks header-specific rules).
//! * **JSON** ([`JsonTemplate::render`]): a JSON string that is exactly one placeholder becomes the
//!   raw JSON value; placeholders inside longer strings are interpolated as text.
//!
//! Value-to-text rules: strings verbatim, numbers and booleans in their JSON spelling, `null` as the
//! empty string, arrays and objects as compact JSON.

use std::fmt;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::CallVariables;

/// Where a placeholder takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{args}}` (whole arguments object, empty path) or `{{args.a.b}}` (path into it; a numeric
    /// segment also indexes arrays).
    Args(Vec<String>),
    /// `{{call}}` (every call variable as a JSON object, `None`) or `{{call.name}}` (one variable;
    /// the name is everything after `call.`, dots included, because call variables are flat).
    Call(Option<String>),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Args(p) if p.is_empty() => f.write_str("{{args}}"),
            Placeholder::Args(p) => write!(f, "{{{{args.{}}}}}", p.join(".")),
            Placeholder::Call(None) => f.write_str("{{call}}"),
            Placeholder::Call(Some(k)) => write!(f, "{{{{call.{k}}}}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Placeholder),
}

/// A compiled string template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// A template that does not compile (reported as a config error).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unclosed \"{{{{\" at byte {0}")]
    Unclosed(usize),
    /// Anything between the braces other than `args[.path]` / `call[.name]`.
    #[error("unknown placeholder \"{{{{{0}}}}}\" (use {{{{args.<name>}}}} or {{{{call.<name>}}}})")]
    Unknown(String),
    /// `{{args.a..b}}`, `{{args.}}`, `{{call.}}`.
    #[error("empty path segment in placeholder \"{{{{{0}}}}}\"")]
    EmptySegment(String),
}

/// Why a template could not be rendered for one tool call. The `Display` text is what the LLM
/// sees after an `error: ` prefix, so it names the missing argument plainly.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    /// The LLM did not supply an argument the binding needs.
    #[error("missing argument \"{0}\"")]
    MissingArgument(String),
    /// The caller did not supply a call variable the binding needs.
    #[error("missing call variable \"{0}\"")]
    MissingCallVariable(String),
    /// A value would have become a `.`/`..` path segment (path traversal).
    #[error("value of {0} is not allowed as a URL path segment")]
    DotSegment(String),
}

impl Template {
    /// Compiles `src`. Text outside `{{ … }}` is literal; whitespace inside the braces is ignored.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = src;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or(TemplateError::Unclosed(offset + open))?;
            segments.push(Segment::Var(parse_placeholder(&after[..close])?));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// True when the template contains no placeholder.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// `Some` when the whole template is exactly one placeholder (no surrounding text).
    pub fn as_single_placeholder(&self) -> Option<&Placeholder> {
        match self.segments.as_slice() {
            [Segment::Var(p)] => Some(p),
            _ => None,
        }
    }

    /// Every placeholder, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(p) => Some(p),
            Segment::Literal(_) => None,
        })
    }

    /// Renders with values inserted as text.
    pub fn render_text(&self, args: &Value, call: &CallVariables) -> Result<String, RenderError> {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Var(p) => push_text(&mut out, &resolve(p, args, call)?),
            }
        }
        Ok(out)
    }

    /// Renders a URL template: values are percent-encoded. Returns the URL string; the caller
    /// parses and validates it.
    pub fn render_url(&self, args: &Value, call: &CallVariables) -> Result<String, RenderError> {
        let mut out = String::new();
        // Placeholders before the first literal `?` or `#` are in the scheme/authority/path.
        let mut in_path = true;
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => {
                    out.push_str(s);
                    if s.contains(['?', '#']) {
                        in_path = false;
                    }
                }
                Segment::Var(p) => {
                    let mut text = String::new();
                    push_text(&mut text, &resolve(p, args, call)?);
                    if in_path && (text == "." || text == "..") {
                        return Err(RenderError::DotSegment(p.to_string()));
                    }
                    out.push_str(&urlencoding::encode(&text));
                }
            }
        }
        Ok(out)
    }

    /// The template with every placeholder replaced by `sample` (used to validate a URL template's
    /// shape at config time).
    pub(crate) fn render_with_sample(&self, sample: &str) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Var(_) => out.push_str(sample),
            }
        }
        out
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, TemplateError> {
    let inner_t = inner.trim();
    let (ns, rest) = match inner_t.split_once('.') {
        Some((ns, rest)) => (ns, Some(rest)),
        None => (inner_t, None),
    };
    match (ns, rest) {
        ("args", None) => Ok(Placeholder::Args(Vec::new())),
        ("args", Some(path)) => {
            let segs: Vec<String> = path.split('.').map(str::to_string).collect();
            if segs.iter().any(|s| s.is_empty() || s.trim() != s) {
                return Err(TemplateError::EmptySegment(inner_t.to_string()));
            }
            Ok(Placeholder::Args(segs))
        }
        ("call", None) => Ok(Placeholder::Call(None)),
        ("call", Some(name)) if !name.is_empty() => Ok(Placeholder::Call(Some(name.to_string()))),
        ("call", Some(_)) => Err(TemplateError::EmptySegment(inner_t.to_string())),
        _ => Err(TemplateError::Unknown(inner_t.to_string())),
    }
}

/// Looks a placeholder up. Returns an owned value because `{{call}}` builds an object.
fn resolve(p: &Placeholder, args: &Value, call: &CallVariables) -> Result<Value, RenderError> {
    match p {
        Placeholder::Args(path) => {
            let mut cur = args;
            for seg in path {
                let next = match cur {
                    Value::Object(m) => m.get(seg),
                    Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                };
                cur = next.ok_or_else(|| RenderError::MissingArgument(path.join(".")))?;
            }
            Ok(cur.clone())
        }
        Placeholder::Call(Some(k)) => {
            call.get(k).map(|v| Value::String(v.to_string())).ok_or_else(|| RenderError::MissingCallVariable(k.clone()))
        }
        Placeholder::Call(None) => {
            Ok(Value::Object(call.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()))
        }
    }
}

fn push_text(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        // Numbers, booleans, arrays and objects: their compact JSON spelling.
        other => out.push_str(&other.to_string()),
    }
}

/// A compiled JSON body template: the same shape as the configured JSON, with every string
/// compiled as a [`Template`]. Object keys are literal.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    /// A non-string scalar, or a string without placeholders.
    Literal(Value),
    /// A string that is exactly one placeholder: replaced by the raw JSON value.
    Raw(Placeholder),
    /// A string with text around its placeholders: interpolated as text.
    Text(Template),
    /// An array of templates.
    Array(Vec<JsonTemplate>),
    /// An object of templates (keys literal, order kept as configured).
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// Compiles a configured JSON value.
    pub fn parse(v: &Value) -> Result<Self, TemplateError> {
        Ok(match v {
            Value::String(s) => {
                let t = Template::parse(s)?;
                if t.is_literal() {
                    JsonTemplate::Literal(v.clone())
                } else if let Some(p) = t.as_single_placeholder() {
                    JsonTemplate::Raw(p.clone())
                } else {
                    JsonTemplate::Text(t)
                }
            }
            Value::Array(a) => JsonTemplate::Array(a.iter().map(JsonTemplate::parse).collect::<Result<_, _>>()?),
            Value::Object(o) => {
                JsonTemplate::Object(o.iter().map(|(k, v)| Ok((k.clone(), JsonTemplate::parse(v)?))).collect::<Result<
                    _,
                    TemplateError,
                >>(
                )?)
            }
            other => JsonTemplate::Literal(other.clone()),
        })
    }

    /// Renders against one call's values.
    pub fn render(&self, args: &Value, call: &CallVariables) -> Result<Value, RenderError> {
        Ok(match self {
            JsonTemplate::Literal(v) => v.clone(),
            JsonTemplate::Raw(p) => resolve(p, args, call)?,
            JsonTemplate::Text(t) => Value::String(t.render_text(args, call)?),
            JsonTemplate::Array(a) => Value::Array(a.iter().map(|t| t.render(args, call)).collect::<Result<_, _>>()?),
            JsonTemplate::Object(o) => {
                let mut m = Map::with_capacity(o.len());
                for (k, t) in o {
                    m.insert(k.clone(), t.render(args, call)?);
                }
                Value::Object(m)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call() -> CallVariables {
        [("session_id", "s-1"), ("caller_id", "+91 98765"), ("my.field", "dotted")].into_iter().collect()
    }

    #[test]
    fn parses_literals_and_placeholders() {
        let t = Template::parse("a{{args.x}}b{{ call.session_id }}c").unwrap();
        assert!(!t.is_literal());
        assert_eq!(
            t.placeholders().cloned().collect::<Vec<_>>(),
            vec![Placeholder::Args(vec!["x".into()]), Placeholder::Call(Some("session_id".into()))]
        );
        assert!(Template::parse("plain } text }}").unwrap().is_literal());
        assert_eq!(Template::parse("").unwrap().segments, vec![]);
    }

    #[test]
    fn rejects_malformed_placeholders() {
        assert_eq!(Template::parse("ab{{args.x"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("{{x}}{{args.y"), Err(TemplateError::Unknown("x".into())));
        assert_eq!(Template::parse("ok {{args.y}} {{"), Err(TemplateError::Unclosed(14)));
        assert!(matches!(Template::parse("{{}}"), Err(TemplateError::Unknown(_))));
        assert!(matches!(Template::parse("{{env.HOME}}"), Err(TemplateError::Unknown(_))));
        assert!(matches!(Template::parse("{{args..x}}"), Err(TemplateError::EmptySegment(_))));
        assert!(matches!(Template::parse("{{args.x.}}"), Err(TemplateError::EmptySegment(_))));
        assert!(matches!(Template::parse("{{call.}}"), Err(TemplateError::EmptySegment(_))));
        // The error text names the placeholder.
        assert!(Template::parse("{{foo.bar}}").unwrap_err().to_string().contains("{{foo.bar}}"));
    }

    #[test]
    fn renders_text_with_value_rules() {
        let args = json!({"s": "hi", "n": 42, "f": 1.5, "b": true, "z": null, "o": {"k": [1, 2]}});
        let t = Template::parse("{{args.s}}|{{args.n}}|{{args.f}}|{{args.b}}|{{args.z}}|{{args.o}}").unwrap();
        assert_eq!(t.render_text(&args, &call()).unwrap(), r#"hi|42|1.5|true||{"k":[1,2]}"#);
    }

    #[test]
    fn resolves_nested_paths_array_indices_and_dotted_call_names() {
        let args = json!({"customer": {"ids": ["a", "b"], "name": {"first": "Asha"}}});
        let t = Template::parse("{{args.customer.name.first}}-{{args.customer.ids.1}}-{{call.my.field}}").unwrap();
        assert_eq!(t.render_text(&args, &call()).unwrap(), "Asha-b-dotted");
    }

    #[test]
    fn missing_values_are_named() {
        let args = json!({"customer": {"id": 7}});
        let e = Template::parse("{{args.order_id}}").unwrap().render_text(&args, &call()).unwrap_err();
        assert_eq!(e.to_string(), r#"missing argument "order_id""#);
        let e = Template::parse("{{args.customer.name}}").unwrap().render_text(&args, &call()).unwrap_err();
        assert_eq!(e, RenderError::MissingArgument("customer.name".into()));
        // Indexing into a scalar is "missing", not a panic.
        let e = Template::parse("{{args.customer.id.x}}").unwrap().render_text(&args, &call()).unwrap_err();
        assert_eq!(e, RenderError::MissingArgument("customer.id.x".into()));
        let e = Template::parse("{{call.did}}").unwrap().render_text(&args, &call()).unwrap_err();
        assert_eq!(e.to_string(), r#"missing call variable "did""#);
    }

    #[test]
    fn url_rendering_percent_encodes_values_only() {
        let args = json!({"id": "A/B?c=d&e#f", "q": "x y+é"});
        let t = Template::parse("https://h.example/o/{{args.id}}?q={{args.q}}&c={{call.caller_id}}").unwrap();
        assert_eq!(
            t.render_url(&args, &call()).unwrap(),
            "https://h.example/o/A%2FB%3Fc%3Dd%26e%23f?q=x%20y%2B%C3%A9&c=%2B91%2098765"
        );
    }

    #[test]
    fn url_rendering_refuses_dot_segments_in_the_path_only() {
        let t = Template::parse("https://h.example/o/{{args.id}}/x?q={{args.id}}").unwrap();
        for bad in [".", ".."] {
            let e = t.render_url(&json!({"id": bad}), &call()).unwrap_err();
            assert_eq!(e, RenderError::DotSegment("{{args.id}}".into()));
        }
        let q = Template::parse("https://h.example/o?q={{args.id}}").unwrap();
        assert_eq!(q.render_url(&json!({"id": ".."}), &call()).unwrap(), "https://h.example/o?q=..");
        assert_eq!(t.render_url(&json!({"id": "..."}), &call()).unwrap(), "https://h.example/o/.../x?q=...");
    }

    #[test]
    fn json_single_placeholder_keeps_type_and_embedded_interpolates() {
        let body = json!({
            "n": "{{args.n}}",
            "o": "{{ args.o }}",
            "all": "{{args}}",
            "text": "order {{args.n}} for {{call.caller_id}}",
            "list": ["{{args.b}}", 3, null, "lit"],
            "vars": "{{call}}"
        });
        let t = JsonTemplate::parse(&body).unwrap();
        let args = json!({"n": 42, "o": {"k": "v"}, "b": false});
        let out = t.render(&args, &call()).unwrap();
        assert_eq!(out["n"], json!(42));
        assert_eq!(out["o"], json!({"k": "v"}));
        assert_eq!(out["all"], args);
        assert_eq!(out["text"], json!("order 42 for +91 98765"));
        assert_eq!(out["list"], json!([false, 3, null, "lit"]));
        assert_eq!(out["vars"], json!({"session_id": "s-1", "caller_id": "+91 98765", "my.field": "dotted"}));
    }

    #[test]
    fn json_template_errors() {
        assert!(JsonTemplate::parse(&json!({"a": ["{{nope}}"]})).is_err());
        let t = JsonTemplate::parse(&json!({"a": {"b": "{{args.gone}}"}})).unwrap();
        assert_eq!(t.render(&json!({}), &call()).unwrap_err(), RenderError::MissingArgument("gone".into()));
    }

    #[test]
    fn placeholder_display_round_trips() {
        for src in ["{{args}}", "{{args.a.b}}", "{{call}}", "{{call.x.y}}"] {
            let t = Template::parse(src).unwrap();
            assert_eq!(t.as_single_placeholder().unwrap().to_string(), src);
        }
    }
}
