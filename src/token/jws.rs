//! Compact JWS: the one strict parser, and Ed25519 signing.
//!
//! Everything about the format is checked before any cryptography: exactly three segments
//! of the base64url alphabet, a size cap, canonical base64url, a header that is a JSON object
//! with no duplicate members and none of the members that would let a token choose its own
//! key (`jwk`, `jku`, `x5u`, `x5c`) or demand extensions (`crit`).

use ring::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{MAX_TOKEN_BYTES, b64, strict_json};

/// Why a compact JWS was refused before its claims were looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Larger than the size cap.
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not three segments of base64url, or not canonical base64url.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header is not an acceptable JOSE header.
    #[error("unacceptable token header: {0}")]
    Header(String),
    /// The claims are not an acceptable JSON object of the expected shape.
    #[error("unacceptable claims: {0}")]
    Claims(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The JOSE header members Tessera looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg`, exactly as sent.
    pub alg: String,
    /// `typ`, exactly as sent.
    pub typ: String,
    /// `kid`, exactly as sent.
    pub kid: String,
}

/// Header members that are refused outright.
const FORBIDDEN_HEADER_MEMBERS: [&str; 6] = ["crit", "jku", "jwk", "x5u", "x5c", "b64"];

/// A compact JWS whose format and header passed, whose signature has not been checked.
#[derive(Debug)]
pub struct UnverifiedJws<'a> {
    header: Header,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Vec<u8>,
}

/// Whether `kid` is a plausible key id: short, and of the base64url alphabet.
pub fn kid_is_plausible(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 64 && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl<'a> UnverifiedJws<'a> {
    /// Parses the compact serialization, checking format and header only.
    pub fn parse(token: &'a str) -> Result<Self, JwsError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwsError::TooLarge);
        }
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(JwsError::Malformed("characters outside the base64url alphabet"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwsError::Malformed("a compact JWS has exactly three segments"));
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(JwsError::Malformed("empty segment"));
        }
        let header_bytes = b64::decode(h).map_err(|_| JwsError::Malformed("header is not canonical base64url"))?;
        let signature = b64::decode(s).map_err(|_| JwsError::Malformed("signature is not canonical base64url"))?;
        let header = parse_header(&header_bytes, true, true)?;
        Ok(UnverifiedJws { header, signing_input: &token[..h.len() + 1 + p.len()], payload_b64: p, signature })
    }

    /// Parses a JWT issued by someone else (an RFC 7523 assertion): as [`UnverifiedJws::parse`],
    /// except that `typ` may be absent (it is then the empty string). Whoever calls this decides
    /// which `typ` values to accept.
    pub fn parse_untyped(token: &'a str) -> Result<Self, JwsError> {
        Self::parse_foreign(token, true)
    }

    /// Parses a client's own assertion (RFC 7523 §2.2): as [`UnverifiedJws::parse_untyped`],
    /// except that `kid` may be absent too (a client has one registered key; `kid` is then
    /// the empty string).
    pub fn parse_client_assertion(token: &'a str) -> Result<Self, JwsError> {
        Self::parse_foreign(token, false)
    }

    /// The same steps as `parse`, with the header's `typ` optional, and `kid` too unless
    /// `kid_required`.
    fn parse_foreign(token: &'a str, kid_required: bool) -> Result<Self, JwsError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwsError::TooLarge);
        }
        let mut jws = Self::parse_format(token)?;
        let h = token.split('.').next().unwrap_or("");
        let header_bytes = b64::decode(h).map_err(|_| JwsError::Malformed("header is not canonical base64url"))?;
        jws.header = parse_header(&header_bytes, false, kid_required)?;
        Ok(jws)
    }

    fn parse_format(token: &'a str) -> Result<Self, JwsError> {
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(JwsError::Malformed("characters outside the base64url alphabet"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwsError::Malformed("a compact JWS has exactly three segments"));
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(JwsError::Malformed("empty segment"));
        }
        let signature = b64::decode(s).map_err(|_| JwsError::Malformed("signature is not canonical base64url"))?;
        let header = Header { alg: String::new(), typ: String::new(), kid: String::new() };
        Ok(UnverifiedJws { header, signing_input: &token[..h.len() + 1 + p.len()], payload_b64: p, signature })
    }

    /// Verifies the signature with a key of algorithm `alg`: `EdDSA` (a raw 32-byte Ed25519
    /// key), `ES256` (an uncompressed P-256 point, 65 bytes; the signature is the 64-byte
    /// R‖S, never DER) or `RS256` (a DER `RSAPublicKey` of 2048 to 8192 bits). The header's
    /// `alg` must be that algorithm.
    pub fn verify_with(&self, alg: &str, public_key: &[u8]) -> Result<(), JwsError> {
        if self.header.alg != alg {
            return Err(JwsError::BadSignature);
        }
        let (algorithm, sig_len): (&'static dyn ring::signature::VerificationAlgorithm, Option<usize>) = match alg {
            super::ALG_EDDSA => return self.verify_ed25519(public_key),
            ALG_ES256 => (&ECDSA_P256_SHA256_FIXED, Some(64)),
            ALG_RS256 => (&RSA_PKCS1_2048_8192_SHA256, None),
            _ => return Err(JwsError::BadSignature),
        };
        if sig_len.is_some_and(|n| self.signature.len() != n) {
            return Err(JwsError::BadSignature);
        }
        UnparsedPublicKey::new(algorithm, public_key)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwsError::BadSignature)
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Verifies the Ed25519 signature with a raw 32-byte public key.
    pub fn verify_ed25519(&self, public_key: &[u8]) -> Result<(), JwsError> {
        ed25519_verify(public_key, self.signing_input.as_bytes(), &self.signature)
            .then_some(())
            .ok_or(JwsError::BadSignature)
    }

    /// Decodes the claims into `T`, refusing duplicate members and deep nesting. Call only
    /// after the signature verified.
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, JwsError> {
        let bytes =
            b64::decode(self.payload_b64).map_err(|_| JwsError::Malformed("payload is not canonical base64url"))?;
        let map = strict_json::parse_object(&bytes).map_err(JwsError::Claims)?;
        serde_json::from_value(Value::Object(map)).map_err(|e| JwsError::Claims(e.to_string()))
    }
}

/// Whether `signature` is an Ed25519 signature (RFC 8032) of `message` by the raw 32-byte
/// `public_key`: the one check every Ed25519 signature the crate verifies goes through
/// (tokens, DPoP proofs, client assertions, passkeys).
///
/// ed25519-dalek's cofactorless check: the signature is 64 bytes, S is canonical (below the
/// group order), the key decodes to a point, and `[S]B - [k]A` must encode to R's bytes, so a
/// non-canonical R never verifies. It accepts what ring's check accepts (a test holds the two
/// equal over Wycheproof and crafted edge cases) except a key of small order, which ring
/// accepts: anyone can make signatures such a key verifies (for the identity, R = [S]B), so a
/// DPoP proof or passkey "bound" to one proves nothing.
pub fn ed25519_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (<&[u8; 32]>::try_from(public_key), <&[u8; 64]>::try_from(signature)) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    if key.is_weak() {
        return false;
    }
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    ed25519_dalek::Verifier::verify(&key, message, &signature).is_ok()
}

/// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4).
pub const ALG_ES256: &str = "ES256";
/// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3); accepted only on federated assertions.
pub const ALG_RS256: &str = "RS256";

fn parse_header(bytes: &[u8], typ_required: bool, kid_required: bool) -> Result<Header, JwsError> {
    let map = strict_json::parse_object(bytes).map_err(JwsError::Header)?;
    if let Some(m) = FORBIDDEN_HEADER_MEMBERS.iter().find(|m| map.contains_key(**m)) {
        return Err(JwsError::Header(format!("header member {m:?} is not accepted")));
    }
    let get = |name: &str| -> Result<String, JwsError> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(JwsError::Header(format!("{name:?} must be a string"))),
            None => Err(JwsError::Header(format!("{name:?} is required"))),
        }
    };
    let typ = match (map.get("typ"), typ_required) {
        (None, false) => String::new(),
        _ => get("typ")?,
    };
    let kid = match (map.get("kid"), kid_required) {
        (None, false) => String::new(),
        _ => get("kid")?,
    };
    let header = Header { alg: get("alg")?, typ, kid };
    let absent = header.kid.is_empty() && !kid_required;
    if !absent && !kid_is_plausible(&header.kid) {
        return Err(JwsError::Header("kid is not a plausible key id".to_owned()));
    }
    Ok(header)
}

/// The base64url of a compact JWS header naming `EdDSA`, `typ` and `kid`.
pub fn encode_header(typ: &str, kid: &str) -> String {
    let header = serde_json::json!({ "alg": super::ALG_EDDSA, "kid": kid, "typ": typ });
    b64::encode(header.to_string().as_bytes())
}

/// Signs `claims` under a header prepared by [`encode_header`].
pub fn sign_ed25519<C: Serialize>(
    header_b64: &str,
    claims: &C,
    key: &ed25519_dalek::SigningKey,
) -> Result<String, serde_json::Error> {
    // Buffers sized once: an access token's claims are some 400 bytes, and growing from
    // serde_json's default 128 would copy them twice.
    let mut payload = Vec::with_capacity(512);
    serde_json::to_writer(&mut payload, claims)?;
    let mut token = String::with_capacity(header_b64.len() + payload.len() * 4 / 3 + 90);
    token.push_str(header_b64);
    token.push('.');
    b64::encode_onto(&payload, &mut token);
    let signature = ed25519_dalek::Signer::sign(key, token.as_bytes()).to_bytes();
    token.push('.');
    b64::encode_onto(&signature, &mut token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::{SecureRandom, SystemRandom};
    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair};

    fn keypair() -> ed25519_dalek::SigningKey {
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed).unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    fn ring_accepts(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
    }

    /// The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_le(a: &[u8], b: &[u8]) -> [u8; 32] {
        let (mut out, mut carry) = ([0u8; 32], 0u16);
        for i in 0..32 {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }

    /// Points whose encodings are edge cases: the eight small-order points (and their
    /// encodings with y at or above the prime, or a negative zero x), y = p and above, and
    /// encodings that decode to no point at all.
    fn edge_points() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect();
            v.try_into().unwrap()
        };
        for s in [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000080",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "0200000000000000000000000000000000000000000000000000000000000000",
        ] {
            out.push(hex(s));
        }
        out
    }

    /// The check the crate uses accepts exactly what ring's accepts, but for keys of small
    /// order (which ring accepts and the crate refuses): valid signatures, and every edge case
    /// of S, R and the key tried here (non-canonical S, small-order and non-canonical points as
    /// key and as R, truncations and flipped bits).
    #[test]
    fn ed25519_verify_accepts_what_ring_accepts_but_small_order_keys() {
        let (mut cases, mut accepted, mut weak_refused) = (0, 0, 0);
        let mut check = |pk: &[u8], msg: &[u8], sig: &[u8]| {
            let (ours, ring) = (ed25519_verify(pk, msg, sig), ring_accepts(pk, msg, sig));
            let weak = <&[u8; 32]>::try_from(pk)
                .ok()
                .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(k).ok())
                .is_some_and(|k| k.is_weak());
            if weak {
                assert!(!ours, "a small-order key verified: pk {pk:02x?} sig {sig:02x?}");
                weak_refused += usize::from(ring);
            } else {
                assert_eq!(ours, ring, "pk {pk:02x?} sig {sig:02x?} msg {msg:02x?}");
            }
            cases += 1;
            accepted += usize::from(ours);
        };
        for len in [0usize, 1, 64, 597, 2048] {
            let key = keypair();
            let pk = key.verifying_key().to_bytes();
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sig = ed25519_dalek::Signer::sign(&key, &msg).to_bytes();
            check(&pk, &msg, &sig);
            // S + L: the same signature with a non-canonical S.
            let mut high = sig;
            high[32..].copy_from_slice(&add_le(&sig[32..], &L));
            check(&pk, &msg, &high);
            for bit in [0, 7, 255, 256, 511] {
                let mut flipped = sig;
                flipped[bit / 8] ^= 1 << (bit % 8);
                check(&pk, &msg, &flipped);
            }
            check(&pk, &msg, &sig[..63]);
            check(&pk[..31], &msg, &sig);
            let mut other = msg.clone();
            other.push(1);
            check(&pk, &other, &sig);
        }
        // Edge-case points as the key and as R, with S of zero and of one.
        let msg = b"edge";
        for pk in edge_points() {
            for r in edge_points() {
                for s0 in [0u8, 1] {
                    let mut sig = [0u8; 64];
                    sig[..32].copy_from_slice(&r);
                    sig[32] = s0;
                    check(&pk, msg, &sig);
                }
            }
        }
        // Valid signatures verified, and signatures ring takes under small-order keys (a
        // forgery needs no secret) were among the cases refused.
        assert!(cases > 500 && accepted >= 5 && weak_refused > 0, "{cases} cases, {accepted} accepted, {weak_refused}");
    }

    /// Keys ring generated sign the same bytes through the crate's signer (Ed25519 is
    /// deterministic), and ring verifies what the crate signs.
    #[test]
    fn signatures_match_ring_for_the_same_seed() {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let ring_pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let seed: [u8; 32] = doc.as_ref()[16..48].try_into().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        assert_eq!(key.verifying_key().as_bytes(), ring_pair.public_key().as_ref());
        let msg = b"header.payload";
        let ours = ed25519_dalek::Signer::sign(&key, msg).to_bytes();
        assert_eq!(&ours[..], ring_pair.sign(msg).as_ref());
        assert!(ring_accepts(ring_pair.public_key().as_ref(), msg, &ours));
    }

    fn with_header(header: &str) -> String {
        format!("{}.{}.{}", b64::encode(header.as_bytes()), b64::encode(b"{}"), b64::encode(&[0u8; 64]))
    }

    #[test]
    fn signs_and_verifies() {
        let key = keypair();
        let token = sign_ed25519(&encode_header("at+jwt", "k1"), &serde_json::json!({"a": 1}), &key).unwrap();
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.header().alg, "EdDSA");
        assert_eq!(jws.header().typ, "at+jwt");
        jws.verify_ed25519(key.verifying_key().as_bytes()).unwrap();
        jws.verify_with("EdDSA", key.verifying_key().as_bytes()).unwrap();
        assert_eq!(jws.claims::<serde_json::Value>().unwrap()["a"], 1);
        let other = keypair();
        assert_eq!(jws.verify_ed25519(other.verifying_key().as_bytes()), Err(JwsError::BadSignature));
        assert_eq!(jws.verify_with("ES256", key.verifying_key().as_bytes()), Err(JwsError::BadSignature));
    }

    #[test]
    fn refuses_bad_shapes() {
        assert!(UnverifiedJws::parse("a.b").is_err());
        assert!(UnverifiedJws::parse("a.b.c.d").is_err());
        assert!(UnverifiedJws::parse("a..c").is_err());
        assert!(UnverifiedJws::parse("a b.c.d").is_err());
        assert_eq!(UnverifiedJws::parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(), JwsError::TooLarge);
    }

    #[test]
    fn refuses_dangerous_headers() {
        for h in [
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","crit":["exp"]}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","jku":"http://x"}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","jwk":{}}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","x5u":"http://x"}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","x5c":[]}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","kid":"j"}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"../../etc/passwd"}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt"}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":1}"#,
            r#"["alg"]"#,
        ] {
            assert!(matches!(UnverifiedJws::parse(&with_header(h)), Err(JwsError::Header(_))), "{h}");
        }
    }
}
