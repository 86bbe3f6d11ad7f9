//! Passkeys (WebAuthn) for operators: the relying party's checks of a registration and of an
//! assertion (W3C WebAuthn Level 2, §7.1 and §7.2), and the challenge that commits a decision
//! to its approval, parameters and verdict (design §15).
//!
//! Registration takes the credential's public key as the browser reports it
//! (`AuthenticatorAttestationResponse.getPublicKey()`: SubjectPublicKeyInfo DER), with
//! attestation `none`, and checks it against the credential public key inside the
//! authenticator data, so no CBOR is parsed here. Signatures are checked with ring: ES256
//! (COSE -7) and EdDSA (COSE -8).
//!
//! An assertion's evidence — credential id, authenticator data, client data and signature —
//! is kept in the decision's audit record; [`verify_assertion`] can check it again later
//! against the stored public key, which is how `tessera audit verify` proves which
//! authenticator signed which decision.

use ring::digest::{SHA256, digest};
use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::token::b64;

/// COSE algorithm ES256 (ECDSA P-256, SHA-256).
pub const COSE_ES256: i64 = -7;
/// COSE algorithm EdDSA (Ed25519).
pub const COSE_EDDSA: i64 = -8;

/// SubjectPublicKeyInfo DER prefix of a P-256 key; the 65-byte uncompressed point follows.
const SPKI_P256: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// SubjectPublicKeyInfo DER prefix of an Ed25519 key; the 32-byte key follows.
const SPKI_ED25519: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Authenticator data flags.
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// Why a registration or an assertion was refused. The text names the check, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("passkey refused: {0}")]
pub struct PasskeyError(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, PasskeyError> {
    Err(PasskeyError(why.into()))
}

/// The relying party: its id (a host name, never an IP address) and the origins the console is
/// served under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    /// `passkey_rp_id`.
    pub rp_id: String,
    /// `passkey_origins`, compared exactly.
    pub origins: Vec<String>,
}

/// A credential's public key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialKey {
    /// COSE algorithm: [`COSE_ES256`] or [`COSE_EDDSA`].
    pub alg: i64,
    /// The raw key: a 65-byte uncompressed P-256 point, or 32 Ed25519 bytes.
    pub raw: Vec<u8>,
}

/// What the browser returns from `navigator.credentials.create()`, decoded.
#[derive(Debug, Clone)]
pub struct Registration {
    /// `rawId`.
    pub credential_id: Vec<u8>,
    /// `response.clientDataJSON`.
    pub client_data_json: Vec<u8>,
    /// `response.getAuthenticatorData()`.
    pub authenticator_data: Vec<u8>,
    /// `response.getPublicKey()`: SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// `response.getPublicKeyAlgorithm()`.
    pub alg: i64,
}

/// What the browser returns from `navigator.credentials.get()`, decoded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assertion {
    /// `rawId`, base64url.
    pub credential_id: String,
    /// `response.clientDataJSON`, base64url.
    pub client_data: String,
    /// `response.authenticatorData`, base64url.
    pub authenticator_data: String,
    /// `response.signature`, base64url.
    pub signature: String,
}

#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: bool,
}

fn client_data(rp: &RelyingParty, bytes: &[u8], kind: &str, challenge: &[u8]) -> Result<(), PasskeyError> {
    let Ok(cd) = serde_json::from_slice::<ClientData>(bytes) else {
        return refuse("the client data is not WebAuthn client data");
    };
    if cd.kind != kind {
        return refuse(format!("the client data is of type {:?}, not {kind}", cd.kind));
    }
    if cd.challenge != b64::encode(challenge) {
        return refuse("the assertion answers another challenge");
    }
    if !rp.origins.iter().any(|o| *o == cd.origin) {
        return refuse(format!("the origin {:?} is not one of passkey_origins", cd.origin));
    }
    if cd.cross_origin {
        return refuse("a cross-origin ceremony");
    }
    Ok(())
}

/// Checks the fixed part of authenticator data; returns its flags and signature counter.
fn authenticator_data(rp: &RelyingParty, data: &[u8]) -> Result<(u8, u32), PasskeyError> {
    if data.len() < 37 {
        return refuse("the authenticator data is too short");
    }
    if data[..32] != *digest(&SHA256, rp.rp_id.as_bytes()).as_ref() {
        return refuse("the authenticator data is for another relying party id");
    }
    let flags = data[32];
    if flags & FLAG_UP == 0 {
        return refuse("the user was not present");
    }
    if flags & FLAG_UV == 0 {
        return refuse("the authenticator did not verify the user (user verification is required)");
    }
    Ok((flags, u32::from_be_bytes([data[33], data[34], data[35], data[36]])))
}

/// Checks a registration against the challenge issued for it; returns the credential's key
/// and its signature counter.
pub fn verify_registration(
    rp: &RelyingParty,
    reg: &Registration,
    challenge: &[u8],
) -> Result<(CredentialKey, u32), PasskeyError> {
    client_data(rp, &reg.client_data_json, "webauthn.create", challenge)?;
    let data = &reg.authenticator_data;
    let (flags, count) = authenticator_data(rp, data)?;
    if flags & FLAG_AT == 0 {
        return refuse("the authenticator data carries no credential");
    }
    // aaguid (16), credential id length (2), credential id, then the COSE key.
    let Some(len) = data.get(53..55).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
        return refuse("the authenticator data is truncated");
    };
    let Some(id) = data.get(55..55 + len) else { return refuse("the authenticator data is truncated") };
    if id != reg.credential_id.as_slice() || id.is_empty() || id.len() > 1023 {
        return refuse("the credential id does not match the authenticator data");
    }
    let cose = &data[55 + len..];
    let key = match reg.alg {
        COSE_ES256 => {
            let Some(point) = reg.public_key.strip_prefix(&SPKI_P256[..]).filter(|p| p.len() == 65 && p[0] == 4) else {
                return refuse("the public key is not a P-256 key");
            };
            // The COSE key holds x and y as 32-byte byte strings (0x58 0x20 …).
            if !contains_bstr(cose, &point[1..33]) || !contains_bstr(cose, &point[33..65]) {
                return refuse("the public key does not match the authenticator data");
            }
            CredentialKey { alg: COSE_ES256, raw: point.to_vec() }
        }
        COSE_EDDSA => {
            let Some(raw) = reg.public_key.strip_prefix(&SPKI_ED25519[..]).filter(|p| p.len() == 32) else {
                return refuse("the public key is not an Ed25519 key");
            };
            if !contains_bstr(cose, raw) {
                return refuse("the public key does not match the authenticator data");
            }
            CredentialKey { alg: COSE_EDDSA, raw: raw.to_vec() }
        }
        other => return refuse(format!("algorithm {other} is not accepted (ES256 or EdDSA)")),
    };
    Ok((key, count))
}

fn contains_bstr(haystack: &[u8], value: &[u8]) -> bool {
    let mut needle = vec![0x58, 0x20];
    needle.extend_from_slice(value);
    value.len() == 32 && haystack.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// Checks an assertion: the challenge, the origin, the relying party id, user presence and
/// verification, the signature over `authenticatorData || SHA-256(clientDataJSON)` with `key`,
/// and that the counter moved past `stored_count` (when either is non-zero). Returns the new
/// counter.
pub fn verify_assertion(
    rp: &RelyingParty,
    a: &Assertion,
    challenge: &[u8],
    key: &CredentialKey,
    stored_count: u32,
) -> Result<u32, PasskeyError> {
    let decode = |what: &str, s: &str| b64::decode(s).map_err(|_| PasskeyError(format!("{what} is not base64url")));
    let client = decode("the client data", &a.client_data)?;
    let data = decode("the authenticator data", &a.authenticator_data)?;
    let signature = decode("the signature", &a.signature)?;
    client_data(rp, &client, "webauthn.get", challenge)?;
    let (_, count) = authenticator_data(rp, &data)?;
    let mut signed = data.clone();
    signed.extend_from_slice(digest(&SHA256, &client).as_ref());
    let alg: &dyn ring::signature::VerificationAlgorithm = match key.alg {
        COSE_ES256 => &ECDSA_P256_SHA256_ASN1,
        COSE_EDDSA => &ED25519,
        _ => return refuse("the stored key's algorithm is not accepted"),
    };
    if UnparsedPublicKey::new(alg, &key.raw).verify(&signed, &signature).is_err() {
        return refuse("the signature does not verify");
    }
    if (count != 0 || stored_count != 0) && count <= stored_count {
        return refuse("the signature counter did not advance: the authenticator may have been cloned");
    }
    Ok(count)
}

/// The challenge of a decision: SHA-256 over the approval id, its `params_digest`, the verdict
/// and a random nonce, so the assertion signs exactly this decision on exactly these
/// parameters, and anyone can recompute it from the audit record.
pub fn decision_challenge(approval_id: &str, params_digest: &str, decision: &str, nonce: &str) -> [u8; 32] {
    let mut input = b"tessera passkey decision v1".to_vec();
    for part in [approval_id, params_digest, decision, nonce] {
        input.push(0);
        input.extend_from_slice(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

/// Whether `host` is an IP address, where browsers refuse WebAuthn.
pub fn is_ip_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
pub(crate) mod soft {
    //! A software authenticator for tests: ES256 with ring, user-verifying unless told not to.

    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    use super::*;

    pub struct Soft {
        pub pair: EcdsaKeyPair,
        pub id: Vec<u8>,
        pub count: u32,
        pub uv: bool,
    }

    impl Soft {
        pub fn new() -> Soft {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
            Soft { pair, id: b"soft-credential-1".to_vec(), count: 0, uv: true }
        }

        fn flags(&self, extra: u8) -> u8 {
            FLAG_UP | if self.uv { FLAG_UV } else { 0 } | extra
        }

        pub fn register(&self, rp_id: &str, origin: &str, challenge: &[u8]) -> Registration {
            let point = self.pair.public_key().as_ref().to_vec();
            let mut data = digest(&SHA256, rp_id.as_bytes()).as_ref().to_vec();
            data.push(self.flags(FLAG_AT));
            data.extend_from_slice(&0u32.to_be_bytes());
            data.extend_from_slice(&[0u8; 16]);
            data.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
            data.extend_from_slice(&self.id);
            // The COSE key: {1: 2, 3: -7, -1: 1, -2: x, -3: y}.
            data.extend_from_slice(&[0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20]);
            data.extend_from_slice(&point[1..33]);
            data.extend_from_slice(&[0x22, 0x58, 0x20]);
            data.extend_from_slice(&point[33..65]);
            let mut spki = SPKI_P256.to_vec();
            spki.extend_from_slice(&point);
            Registration {
                credential_id: self.id.clone(),
                client_data_json: client_json("webauthn.create", challenge, origin),
                authenticator_data: data,
                public_key: spki,
                alg: COSE_ES256,
            }
        }

        pub fn assert(&mut self, rp_id: &str, origin: &str, challenge: &[u8]) -> Assertion {
            self.count += 1;
            let mut data = digest(&SHA256, rp_id.as_bytes()).as_ref().to_vec();
            data.push(self.flags(0));
            data.extend_from_slice(&self.count.to_be_bytes());
            let client = client_json("webauthn.get", challenge, origin);
            let mut signed = data.clone();
            signed.extend_from_slice(digest(&SHA256, &client).as_ref());
            let sig = self.pair.sign(&SystemRandom::new(), &signed).unwrap();
            Assertion {
                credential_id: b64::encode(&self.id),
                client_data: b64::encode(&client),
                authenticator_data: b64::encode(&data),
                signature: b64::encode(sig.as_ref()),
            }
        }
    }

    pub fn client_json(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"type": kind, "challenge": b64::encode(challenge), "origin": origin}))
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::soft::Soft;
    use super::*;

    fn rp() -> RelyingParty {
        RelyingParty { rp_id: "localhost".into(), origins: vec!["http://localhost:8700".into()] }
    }

    #[test]
    fn a_registration_and_its_assertions_verify_and_nothing_else_does() {
        let rp = rp();
        let mut soft = Soft::new();
        let reg = soft.register("localhost", "http://localhost:8700", b"enrol-challenge");
        let (key, count) = verify_registration(&rp, &reg, b"enrol-challenge").unwrap();
        assert_eq!((key.alg, count), (COSE_ES256, 0));
        assert!(verify_registration(&rp, &reg, b"another challenge").is_err());
        let mut other_key = reg.clone();
        other_key.public_key = soft::Soft::new().register("localhost", "x", b"c").public_key;
        assert!(verify_registration(&rp, &other_key, b"enrol-challenge").is_err(), "a key not in the data");
        let elsewhere = soft.register("localhost", "http://127.0.0.1:8700", b"enrol-challenge");
        assert!(verify_registration(&rp, &elsewhere, b"enrol-challenge").is_err(), "an origin not allowed");
        let other_rp = soft.register("evil.example", "http://localhost:8700", b"enrol-challenge");
        assert!(verify_registration(&rp, &other_rp, b"enrol-challenge").is_err(), "another rp id");

        let c = decision_challenge("apr_1", "sha256:x", "approve", "nonce");
        let a = soft.assert("localhost", "http://localhost:8700", &c);
        assert_eq!(verify_assertion(&rp, &a, &c, &key, 0).unwrap(), 1);
        // The same assertion again: the counter did not move.
        assert!(verify_assertion(&rp, &a, &c, &key, 1).is_err());
        // Another decision, another approval, other parameters: another challenge.
        for other in [
            decision_challenge("apr_1", "sha256:x", "deny", "nonce"),
            decision_challenge("apr_2", "sha256:x", "approve", "nonce"),
            decision_challenge("apr_1", "sha256:y", "approve", "nonce"),
        ] {
            assert!(verify_assertion(&rp, &a, &other, &key, 0).is_err());
        }
        // A signature over anything else.
        let mut forged = soft.assert("localhost", "http://localhost:8700", &c);
        forged.signature = a.signature.clone();
        assert!(verify_assertion(&rp, &forged, &c, &key, 1).is_err());
    }

    #[test]
    fn an_authenticator_that_does_not_verify_the_user_is_refused() {
        let rp = rp();
        let mut soft = Soft::new();
        let (key, _) =
            verify_registration(&rp, &soft.register("localhost", "http://localhost:8700", b"c"), b"c").unwrap();
        soft.uv = false;
        let err = verify_assertion(&rp, &soft.assert("localhost", "http://localhost:8700", b"d"), b"d", &key, 0);
        assert!(err.unwrap_err().0.contains("verify the user"));
        assert!(verify_registration(&rp, &soft.register("localhost", "http://localhost:8700", b"c"), b"c").is_err());
    }

    #[test]
    fn ip_hosts_are_recognised() {
        assert!(is_ip_host("127.0.0.1") && is_ip_host("[::1]") && !is_ip_host("localhost"));
    }
}
