//! JSON parsing that refuses duplicate object members at any depth and caps nesting.
//!
//! RFC 7515 §4 and RFC 7519 §4 let a parser either reject duplicate members or keep the last
//! one; rejecting means no two parsers can disagree about what a token says.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting accepted in a token header or claim set.
pub const MAX_DEPTH: usize = 16;

/// Parses `bytes` as one JSON object, refusing duplicate members and deep nesting.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed { depth: 0 }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("not a JSON object".to_owned()),
    }
}

/// The first pair of member names, in any object of `value` at any depth, that are equal once
/// case-folded (`key`/`KEY`, `k`/U+212A KELVIN SIGN, `ss`/`ß`): parsers that match member names
/// case-insensitively (Go's `encoding/json`, last one wins) read such a body differently from
/// one that does not, so a gated body must not have any (design §18).
pub fn case_collision(value: &Value) -> Option<(String, String)> {
    match value {
        Value::Object(map) => {
            let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::with_capacity(map.len());
            for (k, v) in map {
                if let Some(first) = seen.insert(fold(k), k) {
                    return Some((first.to_owned(), k.clone()));
                }
                if let Some(c) = case_collision(v) {
                    return Some(c);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(case_collision),
        _ => None,
    }
}

/// A case folding that maps every spelling a case-insensitive matcher might take as equal to
/// one form: upper case first (`ß` → `SS`, `ſ` → `S`), then lower (KELVIN SIGN → `k`).
fn fold(s: &str) -> String {
    if s.is_ascii() { s.to_ascii_lowercase() } else { s.to_uppercase().to_lowercase() }
}

struct Seed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor { depth: self.depth })
    }
}

struct StrictVisitor {
    depth: usize,
}

impl StrictVisitor {
    fn deeper<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= MAX_DEPTH { Err(E::custom("JSON nested too deeply")) } else { Ok(self.depth + 1) }
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed { depth })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.deeper()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member {:?}",
                    key.chars().take(32).collect::<String>()
                )));
            }
            let v = map.next_value_seed(Seed { depth })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicates_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_object(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_object(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_object(br#"{"a":1,"b":2}"#).is_ok());
    }

    #[test]
    fn finds_case_folded_collisions_at_any_depth() {
        let v = |t: &str| Value::Object(parse_object(t.as_bytes()).unwrap());
        for bad in [
            r#"{"key":"a","KEY":"b"}"#,
            r#"{"k":1,"\u212a":2}"#,
            r#"{"Straße":1,"STRASSE":2}"#,
            r#"{"a":{"x":1,"X":2}}"#,
            r#"{"a":[1,{"song":1,"\u017fong":2}]}"#,
        ] {
            assert!(case_collision(&v(bad)).is_some(), "{bad}");
        }
        for good in [r#"{"key":"a","keys":"b"}"#, r#"{"a":{"x":1},"b":{"x":2}}"#, r#"{"é":1,"e":2}"#] {
            assert_eq!(case_collision(&v(good)), None, "{good}");
        }
    }

    #[test]
    fn refuses_non_objects_trailing_data_and_depth() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(br#"{"a":1} x"#).is_err());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert!(parse_object(deep.as_bytes()).is_err());
    }
}
