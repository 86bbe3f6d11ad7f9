//! Clients that authenticate by key (RFC 7523 §2.2, `private_key_jwt`; design §18): the
//! public JWK they register, and the checks of the assertion they sign for each request.
//!
//! An assertion is accepted only if: it is a compact JWS of at most 8 KiB whose header has no
//! `typ` or `typ: JWT`, `alg` the registered key's (`EdDSA` or `ES256`) and, when a `kid` is
//! sent, the registered key's id; the signature verifies with that key; `iss` and `sub` are
//! both the client id; `aud` names the broker's issuer or its token endpoint; `exp` is an
//! integer, not past and at most five minutes ahead; `iat` and `nbf`, when present, integers
//! not in the future; `jti` a non-empty string (spent once, by the caller, in the database).

use serde_json::{Map, Value};

use crate::store::client_keys::ClientKey;
use crate::token::jws::{ALG_ES256, kid_is_plausible};
use crate::token::{ALG_EDDSA, UnverifiedJws, b64, strict_json};
use crate::verify::jwks::parse_jwks;

/// The `client_assertion_type` of RFC 7523 §2.2.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The algorithms a client key may have.
pub const KEY_ALGS: [&str; 2] = [ALG_EDDSA, ALG_ES256];
/// How far ahead an assertion's `exp` may be, seconds.
pub const MAX_ASSERTION_AHEAD_SECS: i64 = 300;

/// Reads a client's public JWK (one key, not a set): Ed25519 (`OKP`) or P-256 (`EC`), no
/// private member. A key without `kid` is given its RFC 7638 thumbprint as one.
pub fn parse_public_jwk(text: &str) -> Result<ClientKey, String> {
    let mut jwk: Map<String, Value> =
        strict_json::parse_object(text.trim().as_bytes()).map_err(|e| format!("the JWK is not a JSON object: {e}"))?;
    if jwk.contains_key("keys") {
        return Err("give one public JWK, not a JWK set".into());
    }
    if let Some(m) = ["d", "p", "q", "dp", "dq", "qi", "k"].iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!("the JWK holds a private or secret member ({m}); give its public half only"));
    }
    let s = |k: &Map<String, Value>, name: &str| k.get(name).and_then(Value::as_str).map(str::to_owned);
    let coord = |k: &Map<String, Value>, name: &str| s(k, name).and_then(|v| b64::decode(&v).ok());
    let (alg, thumbprint) = match (s(&jwk, "kty").as_deref(), s(&jwk, "crv").as_deref()) {
        (Some("OKP"), Some("Ed25519")) => {
            let x = coord(&jwk, "x").filter(|x| x.len() == 32).ok_or("the Ed25519 JWK's x is not 32 bytes")?;
            (ALG_EDDSA, crate::verify::dpop::ed25519_thumbprint(&x))
        }
        (Some("EC"), Some("P-256")) => {
            let x = coord(&jwk, "x").filter(|x| x.len() == 32).ok_or("the P-256 JWK's x is not 32 bytes")?;
            let y = coord(&jwk, "y").filter(|y| y.len() == 32).ok_or("the P-256 JWK's y is not 32 bytes")?;
            (ALG_ES256, crate::verify::dpop::p256_thumbprint(&x, &y))
        }
        _ => return Err("the JWK must be an Ed25519 (kty OKP) or P-256 (kty EC) public key".into()),
    };
    if s(&jwk, "alg").is_some_and(|a| a != alg) {
        return Err(format!("the JWK's alg must be {alg} for its key type"));
    }
    let kid = match jwk.get("kid") {
        None => thumbprint,
        Some(Value::String(k)) if kid_is_plausible(k) => k.clone(),
        Some(_) => return Err("the JWK's kid must be 1 to 64 characters of the base64url alphabet".into()),
    };
    jwk.insert("kid".into(), Value::String(kid.clone()));
    jwk.insert("alg".into(), Value::String(alg.into()));
    let jwk = Value::Object(jwk).to_string();
    // The same reader the assertions' key goes through at each request: what is stored reads.
    let key = ClientKey { kid, alg: alg.into(), jwk };
    key_material(&key)?;
    Ok(key)
}

/// The registered key's algorithm and raw public key, as [`UnverifiedJws::verify_with`] takes.
fn key_material(key: &ClientKey) -> Result<(String, Vec<u8>), String> {
    let set = format!(r#"{{"keys":[{}]}}"#, key.jwk);
    let keys = parse_jwks(set.as_bytes()).map_err(|e| format!("the JWK: {e}"))?;
    let k = keys.get(&key.kid).ok_or("the JWK is not a usable signing key (use, key_ops)")?;
    if !KEY_ALGS.contains(&k.alg.as_str()) {
        return Err("the JWK must be an EdDSA or ES256 key".into());
    }
    Ok((k.alg.clone(), k.raw.clone()))
}

/// The client id an assertion claims (`iss`), read before anything is verified: it only
/// chooses which registered key to verify with.
pub fn claimed_client(assertion: &str) -> Result<String, String> {
    let jws = UnverifiedJws::parse_client_assertion(assertion).map_err(|e| format!("client_assertion: {e}"))?;
    let claims: Map<String, Value> =
        jws.claims().map_err(|_| "client_assertion's claims are not a JSON object".to_owned())?;
    match claims.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() && iss.len() <= 256 => Ok(iss.clone()),
        _ => Err("client_assertion has no iss".into()),
    }
}

/// A verified assertion's id and expiry: what the caller spends once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `jti`.
    pub jti: String,
    /// `exp`, with the leeway added: until when the id must be remembered.
    pub remember_until: i64,
}

/// Checks `assertion` as `client_id`'s, signed with `key`, for a broker whose accepted
/// audiences are `audiences` (its issuer and token endpoint), at `now`.
pub fn verify(
    assertion: &str,
    client_id: &str,
    key: &ClientKey,
    audiences: &[&str],
    now: i64,
    leeway: i64,
) -> Result<Verified, String> {
    let jws = UnverifiedJws::parse_client_assertion(assertion).map_err(|e| format!("client_assertion: {e}"))?;
    let header = jws.header();
    if !(header.typ.is_empty() || header.typ.eq_ignore_ascii_case("JWT")) {
        return Err("client_assertion's typ must be JWT or absent".into());
    }
    let (alg, raw) = key_material(key)?;
    if header.alg != alg {
        return Err(format!("client_assertion's alg must be {alg}, the registered key's"));
    }
    if !header.kid.is_empty() && header.kid != key.kid {
        return Err("client_assertion's kid is not the registered key's".into());
    }
    jws.verify_with(&alg, &raw).map_err(|_| "client_assertion's signature does not verify".to_owned())?;
    let claims: Map<String, Value> =
        jws.claims().map_err(|_| "client_assertion's claims are not a JSON object".to_owned())?;
    let text = |name: &str| match claims.get(name) {
        Some(Value::String(v)) => Ok(v.as_str()),
        _ => Err(format!("client_assertion needs {name} (a string)")),
    };
    let int = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("client_assertion's {name} must be an integer")),
    };
    if text("iss")? != client_id || text("sub")? != client_id {
        return Err("client_assertion's iss and sub must both be the client id".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(&a.as_str()),
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str().is_some_and(|a| audiences.contains(&a))),
        _ => false,
    };
    if !aud_ok {
        return Err("client_assertion's aud must be this broker's issuer or token endpoint".into());
    }
    let jti = text("jti")?;
    if jti.is_empty() || jti.len() > 256 {
        return Err("client_assertion's jti is empty or too long".into());
    }
    let exp = int("exp")?.ok_or("client_assertion needs exp (an integer)")?;
    if now >= exp.saturating_add(leeway) {
        return Err("client_assertion has expired".into());
    }
    if exp > now.saturating_add(MAX_ASSERTION_AHEAD_SECS).saturating_add(leeway) {
        return Err("client_assertion's exp is more than five minutes ahead".into());
    }
    let future = |t: Option<i64>| t.is_some_and(|t| t > now.saturating_add(leeway));
    if future(int("iat")?) || future(int("nbf")?) {
        return Err("client_assertion is not yet valid (iat or nbf in the future)".into());
    }
    Ok(Verified { jti: jti.to_owned(), remember_until: exp.saturating_add(leeway) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    const ISS: &str = "https://broker.example";
    const TOKEN_URL: &str = "https://broker.example/oauth/token";
    const NOW: i64 = 1_800_000_000;

    fn ed_key() -> (Ed25519KeyPair, ClientKey) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(pair.public_key().as_ref())});
        let key = parse_public_jwk(&jwk.to_string()).unwrap();
        (pair, key)
    }

    fn sign_ed(pair: &Ed25519KeyPair, header: Value, claims: Value) -> String {
        let input =
            format!("{}.{}", b64::encode(header.to_string().as_bytes()), b64::encode(claims.to_string().as_bytes()));
        let sig = pair.sign(input.as_bytes());
        format!("{input}.{}", b64::encode(sig.as_ref()))
    }

    fn claims(client: &str) -> Value {
        json!({"iss": client, "sub": client, "aud": ISS, "exp": NOW + 300, "iat": NOW, "jti": "j-1"})
    }

    fn check(assertion: &str, key: &ClientKey) -> Result<Verified, String> {
        verify(assertion, "tc_a", key, &[ISS, TOKEN_URL], NOW, 0)
    }

    #[test]
    fn a_well_formed_assertion_verifies_with_and_without_kid() {
        let (pair, key) = ed_key();
        let a = sign_ed(&pair, json!({"alg": "EdDSA", "typ": "JWT"}), claims("tc_a"));
        assert_eq!(check(&a, &key).unwrap(), Verified { jti: "j-1".into(), remember_until: NOW + 300 });
        let a = sign_ed(&pair, json!({"alg": "EdDSA", "kid": key.kid}), claims("tc_a"));
        assert!(check(&a, &key).is_ok());
        let mut c = claims("tc_a");
        c["aud"] = json!(["elsewhere", TOKEN_URL]);
        assert!(check(&sign_ed(&pair, json!({"alg": "EdDSA"}), c), &key).is_ok());
    }

    #[test]
    fn every_claim_that_is_wrong_is_refused() {
        let (pair, key) = ed_key();
        let bad = |f: &dyn Fn(&mut Value)| {
            let mut c = claims("tc_a");
            f(&mut c);
            check(&sign_ed(&pair, json!({"alg": "EdDSA"}), c), &key).unwrap_err()
        };
        assert!(bad(&|c| c["iss"] = json!("tc_b")).contains("iss and sub"));
        assert!(bad(&|c| c["sub"] = json!("tc_b")).contains("iss and sub"));
        assert!(bad(&|c| c["aud"] = json!("https://other.example")).contains("aud"));
        assert!(bad(&|c| c["aud"] = json!(format!("{ISS}/"))).contains("aud"));
        assert!(bad(&|c| c["exp"] = json!(NOW)).contains("expired"));
        assert!(bad(&|c| c["exp"] = json!(NOW + 301)).contains("five minutes"));
        assert!(bad(&|c| c["exp"] = json!("soon")).contains("integer"));
        assert!(bad(&|c| c["exp"] = json!(NOW as f64 + 100.5)).contains("integer"));
        assert!(bad(&|c| c["iat"] = json!(NOW + 10)).contains("not yet valid"));
        assert!(bad(&|c| c["nbf"] = json!(NOW + 10)).contains("not yet valid"));
        assert!(bad(&|c| c["jti"] = json!("")).contains("jti"));
        assert!(bad(&|c| drop(c.as_object_mut().unwrap().remove("jti"))).contains("jti"));
    }

    #[test]
    fn a_wrong_key_alg_kid_or_typ_is_refused() {
        let (pair, key) = ed_key();
        let (other, _) = ed_key();
        let a = sign_ed(&other, json!({"alg": "EdDSA"}), claims("tc_a"));
        assert!(check(&a, &key).unwrap_err().contains("signature"));
        let a = sign_ed(&pair, json!({"alg": "EdDSA", "kid": "someone-else"}), claims("tc_a"));
        assert!(check(&a, &key).unwrap_err().contains("kid"));
        let a = sign_ed(&pair, json!({"alg": "EdDSA", "typ": "dpop+jwt"}), claims("tc_a"));
        assert!(check(&a, &key).unwrap_err().contains("typ"));
        let a = sign_ed(&pair, json!({"alg": "ES256"}), claims("tc_a"));
        assert!(check(&a, &key).unwrap_err().contains("alg"));
        let a = sign_ed(&pair, json!({"alg": "none"}), claims("tc_a"));
        assert!(check(&a, &key).is_err());
        let a = sign_ed(&pair, json!({"alg": "EdDSA", "jwk": {"kty": "OKP"}}), claims("tc_a"));
        assert!(check(&a, &key).is_err());
    }

    #[test]
    fn an_es256_key_verifies_its_assertions() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..]), "kid": "k1"});
        let key = parse_public_jwk(&jwk.to_string()).unwrap();
        assert_eq!((key.kid.as_str(), key.alg.as_str()), ("k1", "ES256"));
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims("tc_a").to_string().as_bytes())
        );
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        assert!(check(&format!("{input}.{}", b64::encode(sig.as_ref())), &key).is_ok());
    }

    #[test]
    fn only_one_public_ed25519_or_p256_jwk_registers() {
        let (_, key) = ed_key();
        let x: Value = serde_json::from_str(&key.jwk).unwrap();
        assert_eq!(key.kid, crate::verify::dpop::ed25519_thumbprint(&b64::decode(x["x"].as_str().unwrap()).unwrap()));
        let refused = |v: Value| parse_public_jwk(&v.to_string()).unwrap_err();
        assert!(refused(json!({"keys": [x]})).contains("not a JWK set"));
        let mut private = x.clone();
        private["d"] = json!(b64::encode(&[0u8; 32]));
        assert!(refused(private).contains("private"));
        assert!(refused(json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})).contains("Ed25519"));
        assert!(refused(json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})).contains("32 bytes"));
        let mut wrong_alg = x.clone();
        wrong_alg["alg"] = json!("ES256");
        assert!(refused(wrong_alg).contains("alg"));
        let mut bad_kid = x.clone();
        bad_kid["kid"] = json!("has spaces");
        assert!(refused(bad_kid).contains("kid"));
        let mut enc = x;
        enc["use"] = json!("enc");
        assert!(refused(enc).contains("usable"));
        assert!(parse_public_jwk("not json").is_err());
    }

    #[test]
    fn the_claimed_client_is_the_unverified_iss() {
        let (pair, _) = ed_key();
        assert_eq!(claimed_client(&sign_ed(&pair, json!({"alg": "EdDSA"}), claims("tc_x"))).unwrap(), "tc_x");
        assert!(claimed_client("a.b").is_err());
    }
}
