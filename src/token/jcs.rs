//! RFC 8785 JSON Canonicalization Scheme and the `params_digest` built on it.
//!
//! Written here rather than taken from a crate because the digest must agree byte for byte
//! with core implementations in other languages, and RFC 8785 §3.2.3 orders object members
//! by their UTF-16 code units, which byte-wise ordering of UTF-8 gets wrong above U+FFFF.
//! Numbers use `ryu-js`, which implements ECMAScript's Number-to-String.

use ring::digest::{SHA256, digest};
use serde_json::Value;

use crate::domain::ParamsDigest;

/// The canonical form of `value`.
pub fn canonicalize(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// `sha256:` + base64url of SHA-256 over the JCS form of `params`.
pub fn params_digest(params: &Value) -> ParamsDigest {
    let canonical = canonicalize(params);
    let d = digest(&SHA256, canonical.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(d.as_ref());
    ParamsDigest::from_sha256(&bytes)
}

/// The largest integer magnitude a digested number may have: 2^53 − 1 (design §11). Beyond
/// it two different integers can become the same double, and so the same digest.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Checks every number in the JSON text `bytes` as design §11 asks of anything digested: an
/// integer literal (no fraction, no exponent) must lie within ±(2^53 − 1); any other number
/// must be finite, within ±(2^53 − 1) too (every double beyond it is an integer, so `…992.0`
/// and `…993.0` would be one), and exactly the double it becomes (`0.10000000000000001` is
/// the double `0.1`, so the digest would cover a number the sender did not write). Reads the
/// text rather than a parsed value because a parsed value no longer says how a number was
/// written. Text that is not JSON passes: the parser that runs next refuses it.
pub fn check_numbers(bytes: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                check_number(&bytes[start..i])?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn check_number(literal: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(literal).unwrap_or_default();
    let shown: String = text.chars().take(40).collect();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        // 2^53 − 1 has 16 digits; JSON allows no leading zeros, so more digits is more.
        let within = digits.len() <= 16 && digits.parse::<u64>().is_ok_and(|n| n <= MAX_SAFE_INTEGER);
        if !within {
            return Err(format!("the integer {shown} is outside ±(2^53 − 1)"));
        }
        return Ok(());
    }
    // Not JSON (the parser refuses it next) when it does not parse.
    let Ok(f) = text.parse::<f64>() else { return Ok(()) };
    if !f.is_finite() {
        return Err(format!("the number {shown} is not finite"));
    }
    if f.abs() > MAX_SAFE_INTEGER as f64 {
        return Err(format!("the number {shown} is outside ±(2^53 − 1)"));
    }
    // The double's shortest form, read back as a decimal, must be the decimal written. A
    // literal the decimal reader cannot hold (an exponent beyond i64) is not that double either.
    match (Decimal::parse(text), Decimal::parse(&format!("{f:e}"))) {
        (Some(written), Some(double)) if written == double => Ok(()),
        _ => Err(format!("the number {shown} is not exactly representable: it would be read as {f}")),
    }
}

/// A decimal number as `±digits × 10^exponent`, digits without leading or trailing zeros (zero
/// has none, and no sign): two spellings of one value compare equal.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Reads `-?int(.frac)?([eE][+-]?exp)?`; `None` for anything else.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let leading = all.bytes().take_while(|b| *b == b'0').count();
        let significant = all[leading..].trim_end_matches('0');
        if significant.is_empty() {
            return Some(Decimal { negative: false, digits: String::new(), exponent: 0 });
        }
        let trailing = all.len() - leading - significant.len();
        let exponent = exp.checked_sub(frac.len() as i64)?.checked_add(trailing as i64)?;
        Some(Decimal { negative, digits: significant.to_owned(), exponent })
    }
}

/// Checks every number of a parsed value: an integer must lie within ±(2^53 − 1), any other
/// number must be finite. A parsed value no longer says how a number was written, and an
/// integer literal beyond 2^64 parses as a double: where the text is at hand, check it with
/// [`check_numbers`] first, as the broker and the gate do.
pub fn check_value_numbers(value: &Value) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            let ok = if let Some(u) = n.as_u64() {
                u <= MAX_SAFE_INTEGER
            } else if let Some(i) = n.as_i64() {
                i.unsigned_abs() <= MAX_SAFE_INTEGER
            } else {
                n.as_f64().is_some_and(|f| f.is_finite() && f.abs() <= MAX_SAFE_INTEGER as f64)
            };
            if ok { Ok(()) } else { Err(format!("the number {n} is outside ±(2^53 − 1)")) }
        }
        Value::Array(items) => items.iter().try_for_each(check_value_numbers),
        Value::Object(map) => map.values().try_for_each(check_value_numbers),
        _ => Ok(()),
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    // JSON numbers are IEEE 754 doubles in I-JSON (RFC 7493), which JCS builds on.
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() {
        // Unreachable for parsed JSON; kept total rather than panicking.
        out.push_str("null");
        return;
    }
    if f == 0.0 {
        out.push('0');
        return;
    }
    let mut buf = ryu_js::Buffer::new();
    out.push_str(buf.format_finite(f));
}

/// Appends `s` as a JSON string: only `"`, `\\` and control characters are escaped, the
/// short forms where JSON has them (RFC 8785 §3.2.2.2). Runs without escapes are copied whole.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `i` and `i + 1` are character boundaries.
        out.push_str(&s[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        canonicalize(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn rfc8785_section_3_2_2_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let expected = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input), expected);
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        // Every ASCII character, and some beyond, against serde_json (whose escapes are the
        // ones RFC 8785 asks for).
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€𝄞\u{2028}");
        for s in [all.as_str(), "", "a", "\"", "x\u{0}y"] {
            let mut out = String::new();
            write_string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16,
        // though after it in UTF-8.
        let got = canon("{\"\u{fb33}\":1,\"\u{1f600}\":2,\"a\":3}");
        assert_eq!(got, "{\"a\":3,\"\u{1f600}\":2,\"\u{fb33}\":1}");
    }

    #[test]
    fn numbers_follow_ecmascript() {
        assert_eq!(canon("[-0, 1.0, 100, 1e21, 1e20, 0.1, -5e-7]"), "[0,1,100,1e+21,100000000000000000000,0.1,-5e-7]");
    }

    #[test]
    fn integers_beyond_2_pow_53_and_non_finite_numbers_are_refused() {
        for ok in [
            "{}",
            r#"{"n": 9007199254740991}"#,
            r#"{"n": -9007199254740991}"#,
            r#"{"n": [0, -0, 1.5, -2.5e-7, 1e15, 4503599627370495.5]}"#,
            r#"{"s": "9007199254740993", "t": "a\"1e999\"b"}"#,
        ] {
            assert_eq!(check_numbers(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            r#"{"n": 9007199254740992}"#,
            r#"{"n": 9007199254740993}"#,
            r#"{"n": -9007199254740992}"#,
            r#"{"n": {"deep": [18446744073709551616]}}"#,
            r#"{"n": 00000000000000000001}"#,
            r#"{"n": 1e999}"#,
            r#"{"n": -1E400}"#,
        ] {
            assert!(check_numbers(bad.as_bytes()).is_err(), "{bad}");
        }
        // The two integers of the review share a double, which is why they are refused.
        let a: Value = serde_json::from_str(r#"{"n": 9007199254740992}"#).unwrap();
        assert!(check_value_numbers(&a).is_err());
        let b: Value = serde_json::from_str(r#"{"n": [-9007199254740993]}"#).unwrap();
        assert!(check_value_numbers(&b).is_err());
        assert!(check_value_numbers(&serde_json::json!({"n": 9_007_199_254_740_991_u64, "f": 0.5, "e": 1e15})).is_ok());
        assert!(check_value_numbers(&serde_json::json!({"e": 1e300})).is_err());
    }

    #[test]
    fn decimals_are_refused_beyond_2_pow_53_or_when_the_double_is_not_what_was_written() {
        for ok in [
            "0.0",
            "-0.0",
            "1.0",
            "1e2",
            "100.000",
            "1.5E+3",
            "0.1",
            "-0.25",
            "1.5e-300",
            "5e-324",
            "2.2250738585072014e-308",
            "9007199254740991.0",
            "9.007199254740991e15",
            "123.456",
        ] {
            assert_eq!(check_numbers(format!("[{ok}]").as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            // The review's pair: both are the double 2^53.
            "9007199254740992.0",
            "9007199254740993.0",
            "-9007199254740992.5",
            "1e16",
            "1e300",
            "12345678901234567890.5",
            // Read as a double other than the decimal written.
            "0.10000000000000001",
            "1.00000000000000001",
            "4.9e-324",
            "1e-400",
            "1e-99999999999999999999",
            "3.14159265358979323846",
        ] {
            let err = check_numbers(format!("{{\"n\": {bad}}}").as_bytes()).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
        // The spelling is the sender's: one value written two ways passes both ways.
        assert_eq!(Decimal::parse("1.50e1"), Decimal::parse("15"));
        assert_eq!(Decimal::parse("-0.0e5"), Decimal::parse("0"));
        assert_ne!(Decimal::parse("1.5"), Decimal::parse("15"));
    }

    #[test]
    fn digest_is_order_independent_and_pinned() {
        let a = params_digest(&serde_json::json!({"key": "K", "value": "v"}));
        let b = params_digest(&serde_json::from_str(r#"{ "value":"v","key":"K" }"#).unwrap());
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("sha256:"));
        // sha256 of the 2-byte string "{}".
        assert_eq!(
            params_digest(&serde_json::json!({})).as_str(),
            "sha256:RBNvo1WzZ4oRRq0W9-hknpT7T8If536DEMBg9hyq_4o"
        );
    }
}
