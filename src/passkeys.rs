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
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::Deserialize;

pub mod ceremonies;

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
    if !rp.origins.contains(&cd.origin) {
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
    let verified = match key.alg {
        COSE_ES256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.raw).verify(&signed, &signature).is_ok(),
        COSE_EDDSA => crate::token::jws::ed25519_verify(&key.raw, &signed, &signature),
        _ => return refuse("the stored key's algorithm is not accepted"),
    };
    if !verified {
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

/// Checks every passkey decision again, from the audit log and the stored passkeys: each
/// `approval.decided` record made with a passkey must carry an assertion that verifies with
/// its credential's public key over the challenge of exactly its approval, digest and verdict;
/// the approval's `params_digest` must still be the one signed; and the `decisions` table must
/// still say the same. Returns how many were checked, or the first problem, named.
pub async fn verify_decisions(store: &crate::store::Store, rp_id: &str) -> Result<usize, String> {
    let fail = |e: crate::store::StoreError| e.to_string();
    let mut checked = 0;
    let mut after = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let page = crate::audit::read_page(store, after, 1000).await.map_err(fail)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page.iter().filter(|r| r.event == crate::audit::EventName::ApprovalDecided) {
            let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap_or_default();
            let text = |k: &str| detail[k].as_str().unwrap_or_default().to_owned();
            let decision = text("decision");
            let stored = crate::store::approvals::decision_of(store, &r.subject, &r.actor).await.map_err(fail)?;
            let method = detail["method"].as_str().unwrap_or("secret");
            if stored.as_ref().is_some_and(|(d, m)| *d != decision || m != method) {
                return Err(format!(
                    "record {}: the decision of {} on {} differs from the decisions table",
                    r.seq, r.actor, r.subject
                ));
            }
            if method != "passkey" {
                continue;
            }
            seen.insert((r.subject.clone(), r.actor.clone()));
            let digest_now = crate::store::approvals::params_digest_of(store, &r.subject).await.map_err(fail)?;
            if digest_now.as_deref().is_some_and(|d| d != text("params_digest")) {
                return Err(format!(
                    "record {}: approval {} no longer has the digest that was signed",
                    r.seq, r.subject
                ));
            }
            let assertion = Assertion {
                credential_id: text("credential_id"),
                client_data: text("client_data"),
                authenticator_data: text("authenticator_data"),
                signature: text("signature"),
            };
            let Some(pk) = crate::store::passkeys::get(store, &assertion.credential_id).await.map_err(fail)? else {
                return Err(format!("record {}: the passkey {} is not stored", r.seq, assertion.credential_id));
            };
            if pk.client_id != r.actor {
                return Err(format!("record {}: the passkey belongs to another operator", r.seq));
            }
            let key = CredentialKey { alg: pk.alg, raw: b64::decode(&pk.public_key).unwrap_or_default() };
            // A break-glass approval's passkey signed the word `break_glass`, not `approve`.
            let signed = if detail["break_glass"] == true { "break_glass".to_owned() } else { decision.clone() };
            let challenge = decision_challenge(&r.subject, &text("params_digest"), &signed, &text("nonce"));
            // The origin was checked when the decision was made, and the signature covers it.
            let origin = b64::decode(&assertion.client_data)
                .ok()
                .and_then(|c| serde_json::from_slice::<ClientData>(&c).ok())
                .map(|c| c.origin)
                .unwrap_or_default();
            let rp = RelyingParty { rp_id: rp_id.to_owned(), origins: vec![origin] };
            verify_assertion(&rp, &assertion, &challenge, &key, 0).map_err(|e| {
                format!("record {}: the passkey decision of {} on {} does not verify: {e}", r.seq, r.actor, r.subject)
            })?;
            checked += 1;
        }
    }
    // And no decision claims a passkey that the audit log does not prove.
    for key in crate::store::approvals::passkey_decisions(store).await.map_err(fail)? {
        if !seen.contains(&key) {
            return Err(format!("the passkey decision of {} on {} has no audit record that proves it", key.1, key.0));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hosts_are_recognised() {
        assert!(is_ip_host("127.0.0.1") && is_ip_host("[::1]") && !is_ip_host("localhost"));
    }

    #[test]
    fn the_decision_challenge_commits_to_every_part() {
        let base = decision_challenge("apr_1", "sha256:x", "approve", "n");
        for other in [
            decision_challenge("apr_2", "sha256:x", "approve", "n"),
            decision_challenge("apr_1", "sha256:y", "approve", "n"),
            decision_challenge("apr_1", "sha256:x", "deny", "n"),
            decision_challenge("apr_1", "sha256:x", "approve", "m"),
            // The separators keep parts from running into each other.
            decision_challenge("apr_1sha256:x", "", "approve", "n"),
        ] {
            assert_ne!(base, other);
        }
    }
}
