//! Request parameters *as presented* to the operator (design §11).
//!
//! The presented form is the JSON parameters with the value of each secret field replaced by
//! `{"$secret": {"length": N, "sha256": "sha256:…"}}`: the length in UTF-8 bytes and the
//! base64url SHA-256 of the value's UTF-8 bytes. The operator sees exactly this form, and the
//! capability binds its digest, so a request whose parameters differ from what was shown — a
//! secret value included, through its fingerprint — fails the digest check.
//!
//! Rules that keep the form unambiguous, for cores in any language:
//!
//! - the parameters are a JSON object; secret fields are top-level members named by the route;
//! - a secret field's value must be a string (anything else is refused), and an absent secret
//!   field stays absent;
//! - no member named `$secret` may appear anywhere in the real parameters, so a fingerprint in
//!   the presented form always stands for a secret value that was really replaced;
//! - every number obeys §11: an integer within ±(2^53 − 1), any number finite.

use ring::digest::{SHA256, digest};
use serde_json::{Map, Value, json};

use super::b64;
use super::jcs::check_value_numbers;

/// The member that marks a replaced secret value.
pub const SECRET_MARK: &str = "$secret";

/// Why parameters have no presented form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PresentedError(pub String);

/// The presented form of `params` for a route whose secret fields are `secret_fields`.
pub fn presented(params: &Value, secret_fields: &[&str]) -> Result<Value, PresentedError> {
    let Value::Object(map) = params else {
        return Err(PresentedError("the parameters must be a JSON object".into()));
    };
    if let Some(path) = find_mark(params, "") {
        return Err(PresentedError(format!("the parameters may not contain a member named {SECRET_MARK} ({path})")));
    }
    check_value_numbers(params).map_err(PresentedError)?;
    let mut out = Map::with_capacity(map.len());
    for (name, value) in map {
        if secret_fields.contains(&name.as_str()) {
            let Value::String(secret) = value else {
                return Err(PresentedError(format!("the secret field {name} must be a string")));
            };
            out.insert(name.clone(), fingerprint(secret));
        } else {
            out.insert(name.clone(), value.clone());
        }
    }
    Ok(Value::Object(out))
}

/// `{"$secret": {"length", "sha256"}}` of a secret value.
pub fn fingerprint(secret: &str) -> Value {
    let d = digest(&SHA256, secret.as_bytes());
    json!({ SECRET_MARK: { "length": secret.len(), "sha256": format!("sha256:{}", b64::encode(d.as_ref())) } })
}

/// Checks parameters that claim to be presented already (as the broker receives them): a JSON
/// object whose numbers obey §11, in which every `$secret` member is a well-formed fingerprint
/// standing alone as a top-level member's value — or, in an MCP tool call's parameters
/// (`{"name": NAME, "arguments": {…}}`, design §18), as a top-level argument's value.
pub fn check_presented(params: &Value) -> Result<(), PresentedError> {
    let Value::Object(map) = params else {
        return Err(PresentedError("params must be a JSON object".into()));
    };
    check_value_numbers(params).map_err(PresentedError)?;
    let tool_call = map.len() == 2
        && map.get("name").is_some_and(Value::is_string)
        && map.get("arguments").is_some_and(Value::is_object);
    if tool_call && let Some(Value::Object(args)) = map.get("arguments") {
        return check_members(args, "arguments.");
    }
    check_members(map, "")
}

fn check_members(map: &Map<String, Value>, prefix: &str) -> Result<(), PresentedError> {
    for (name, value) in map {
        let inner = match value {
            Value::Object(m) if m.contains_key(SECRET_MARK) => m,
            other => {
                if let Some(path) = find_mark(other, &format!("{prefix}{name}")) {
                    return Err(PresentedError(format!(
                        "{SECRET_MARK} may only stand for a top-level member's value ({path})"
                    )));
                }
                continue;
            }
        };
        let well_formed = inner.len() == 1
            && inner.get(SECRET_MARK).and_then(Value::as_object).is_some_and(|fp| {
                fp.len() == 2
                    && fp.get("length").and_then(Value::as_u64).is_some()
                    && fp.get("sha256").and_then(Value::as_str).is_some_and(|s| {
                        s.strip_prefix("sha256:")
                            .is_some_and(|h| h.len() == 43 && b64::decode(h).is_ok_and(|b| b.len() == 32))
                    })
            });
        if !well_formed {
            return Err(PresentedError(format!(
                "{prefix}{name}: a secret must be {{\"{SECRET_MARK}\": {{\"length\": N, \"sha256\": \"sha256:…\"}}}}"
            )));
        }
    }
    Ok(())
}

/// The path of the first member named `$secret` in `value`, if any.
fn find_mark(value: &Value, at: &str) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            if k == SECRET_MARK { Some(here) } else { find_mark(v, &here) }
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| find_mark(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::jcs::params_digest;

    #[test]
    fn secret_fields_become_their_length_and_fingerprint() {
        let p = presented(&json!({"key": "OPENAI_KEY", "value": "sk-é"}), &["value"]).unwrap();
        assert_eq!(p["key"], "OPENAI_KEY");
        // "sk-é" is 5 bytes of UTF-8.
        assert_eq!(p["value"]["$secret"]["length"], 5);
        assert_eq!(
            p["value"]["$secret"]["sha256"],
            format!("sha256:{}", b64::encode(digest(&SHA256, "sk-é".as_bytes()).as_ref()))
        );
        check_presented(&p).unwrap();
        // Absent secret fields stay absent; other routes keep every value.
        assert_eq!(presented(&json!({"key": "K"}), &["value"]).unwrap(), json!({"key": "K"}));
        assert_eq!(presented(&json!({"value": "v"}), &[]).unwrap(), json!({"value": "v"}));
    }

    #[test]
    fn a_changed_secret_of_the_same_length_changes_the_digest() {
        let a = presented(&json!({"key": "K", "value": "secret-1"}), &["value"]).unwrap();
        let b = presented(&json!({"key": "K", "value": "secret-2"}), &["value"]).unwrap();
        assert_eq!(a["value"]["$secret"]["length"], b["value"]["$secret"]["length"]);
        assert_ne!(params_digest(&a), params_digest(&b));
    }

    #[test]
    fn ambiguous_parameters_have_no_presented_form() {
        for (params, why) in [
            (json!([1]), "not an object"),
            (json!({"value": 42}), "a secret that is not a string"),
            (json!({"value": {"nested": "x"}}), "a secret that is an object"),
            (json!({"note": {"$secret": {"length": 1, "sha256": "x"}}}), "a forged mark"),
            (json!({"list": [{"deep": {"$secret": 1}}]}), "a mark deep down"),
            (serde_json::from_str::<Value>(r#"{"n": 9007199254740993}"#).unwrap(), "an unsafe integer"),
        ] {
            assert!(presented(&params, &["value"]).is_err(), "{why}");
        }
    }

    #[test]
    fn the_broker_accepts_only_well_formed_fingerprints_at_the_top() {
        let good = presented(&json!({"key": "K", "value": "v"}), &["value"]).unwrap();
        check_presented(&good).unwrap();
        check_presented(&json!({"a": [1, {"b": "c"}]})).unwrap();
        let fp = good["value"].clone();
        for bad in [
            json!("text"),
            json!({"deep": {"x": fp}}),
            json!({"v": {"$secret": {"length": 1}}}),
            json!({"v": {"$secret": {"length": -1, "sha256": fp["$secret"]["sha256"]}}}),
            json!({"v": {"$secret": {"length": 1, "sha256": "sha256:short"}}}),
            json!({"v": {"$secret": fp["$secret"], "extra": 1}}),
        ] {
            assert!(check_presented(&bad).is_err(), "{bad}");
        }
    }
}
