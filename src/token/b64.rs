//! Strict base64url without padding (RFC 7515 §2): no padding, no other alphabet, and the
//! unused trailing bits must be zero, so every byte string has exactly one encoding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes without padding.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes without padding onto the end of `out`.
pub fn encode_onto(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Decodes canonical unpadded base64url, refusing anything else.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    // The engine refuses padding, foreign characters and non-zero trailing bits.
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_canonical() {
        assert_eq!(decode(&encode(b"hi")).unwrap(), b"hi");
        let mut out = String::from("x.");
        encode_onto(b"hi", &mut out);
        assert_eq!(out, format!("x.{}", encode(b"hi")));
        assert!(decode("aGk=").is_err(), "padding");
        assert!(decode("aGl").is_err(), "non-zero trailing bits");
        assert!(decode("a+k").is_err(), "standard alphabet");
        assert!(decode("a k").is_err(), "space");
    }
}
