//! The generator of the shared verification vectors in `tests/vectors/`.
//!
//! Used by `examples/vectors.rs`, which writes the files, and by the drift test in
//! `tests/api/vectors.rs`, which regenerates them in memory and compares. Keys, times and
//! claims are fixed and Ed25519 signatures are deterministic, so the output is byte-stable.
//! Every JSON text that goes into a token is written out member by member, in a fixed order,
//! so that the output does not depend on how `serde_json` orders maps.

use std::error::Error;

use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::Value;
use tessera::keys::thumbprint;
use tessera::token::b64;
use tessera::token::jcs::canonicalize;
use tessera::verify::params_digest;

/// The verification time of every case, Unix seconds (2027-01-15T08:00:00Z).
const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://tessera.example";
const AUDIENCE: &str = "core";
const LEEWAY_SECS: i64 = 30;
const MAX_LIFETIME_SECS: i64 = 900;
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Seeds of the two published keys and of an attacker's key that is not published.
const SEED_A: &[u8; 32] = b"tessera vectors: published key A";
const SEED_B: &[u8; 32] = b"tessera vectors: published key B";
const SEED_ATTACKER: &[u8; 32] = b"tessera vectors: attacker key X!";

/// The request parameters the valid capability is bound to, as a client would send them.
const PARAMS_JSON: &str = r#"{ "value": "sk-example-123", "note": "rotated by CI", "ttl_days": 30 }"#;
const ACTION: &str = "secret_write";
const RESOURCE: &str = "workspaces/ws-123/secrets/OPENAI_KEY";
const CALLER: &str = "agent-7";
const TENANT: &str = "org-1";

/// The generated files: `jwks.json` and `vectors.json`.
pub struct Files {
    /// The text of `jwks.json`.
    pub jwks: String,
    /// The text of `vectors.json`.
    pub vectors: String,
}

#[derive(Serialize)]
struct Jwk {
    kty: &'static str,
    crv: &'static str,
    x: String,
    kid: String,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
}

#[derive(Serialize)]
struct Jwks<'a> {
    keys: [&'a Jwk; 2],
}

#[derive(Serialize)]
struct Settings {
    algorithms: [&'static str; 1],
    access_typ: [&'static str; 2],
    capability_typ: [&'static str; 1],
    leeway_secs: i64,
    max_lifetime_secs: i64,
    max_token_bytes: usize,
    max_act_depth: usize,
}

#[derive(Serialize)]
struct Digest {
    name: &'static str,
    params_json: &'static str,
    canonical: String,
    params_digest: String,
}

#[derive(Serialize, Clone)]
struct Binding {
    action: String,
    resource: String,
    params_digest: String,
    caller_sub: String,
    caller_tenant: String,
    /// The client ids of the caller token's actors, nearest first (design §12).
    caller_actors: Vec<String>,
}

/// One presented-form case (design §11): a request body, the route's secret fields, and the
/// presented form and its digest, or `refused` when the body has none.
#[derive(Serialize)]
struct PresentedCase {
    name: &'static str,
    params_json: &'static str,
    secret_fields: &'static [&'static str],
    #[serde(skip_serializing_if = "Option::is_none")]
    presented_canonical: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params_digest: Option<String>,
    refused: bool,
    reason: &'static str,
}

#[derive(Serialize)]
struct Case {
    name: String,
    kind: &'static str,
    token: String,
    now: i64,
    issuer: &'static str,
    audience: &'static str,
    expected: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<Binding>,
}

/// One DPoP proof case (design §13), checked in order against one replay cache: the proof
/// presented with `access_token` (absent at a token endpoint) on `method` `url` at `now`, by a
/// token bound to `jkt`.
#[derive(Serialize)]
struct DpopCase {
    name: &'static str,
    proof: String,
    method: &'static str,
    url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'static str>,
    now: i64,
    jkt: String,
    expected: &'static str,
    reason: &'static str,
}

#[derive(Serialize)]
struct Vectors<'a> {
    description: &'static str,
    jwks: &'static str,
    settings: Settings,
    digests: Vec<Digest>,
    presented: Vec<PresentedCase>,
    dpop: Vec<DpopCase>,
    cases: &'a [Case],
}

const DPOP_SEED: &[u8; 32] = b"tessera vectors: agent DPoP key.";
const DPOP_OTHER_SEED: &[u8; 32] = b"tessera vectors: thief DPoP key.";
const DPOP_URL: &str = "https://core.example/workspaces/ws-1/secrets";
const DPOP_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.eyJjbmYiOnsiamt0IjoiLi4uIn19.c2lnbmF0dXJl";

/// The DPoP proof cases: one valid proof, each way a proof can fail, and the valid one again.
fn dpop_cases() -> Result<Vec<DpopCase>, Box<dyn Error>> {
    use serde_json::json;
    use tessera::verify::dpop::{DpopKey, access_token_hash};
    let key = DpopKey::from_ed25519_seed(DPOP_SEED)?;
    let thief = DpopKey::from_ed25519_seed(DPOP_OTHER_SEED)?;
    let ath = access_token_hash(DPOP_TOKEN);
    let claims = |jti: &str, htm: &str, htu: &str, iat: i64, ath: &str| json!({"jti": jti, "htm": htm, "htu": htu, "iat": iat, "ath": ath});
    let header = |alg: &str, jwk: &Value| json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
    let mut private = key.public_jwk().clone();
    private["d"] = json!(b64::encode(DPOP_SEED));
    let none = format!(
        "{}.{}.",
        b64::encode(header("none", key.public_jwk()).to_string().as_bytes()),
        b64::encode(claims("p-none", "PUT", DPOP_URL, NOW, &ath).to_string().as_bytes())
    );
    let valid = key.sign_claims(&claims("p-valid", "PUT", &format!("{DPOP_URL}?dry_run=1"), NOW - 5, &ath))?;
    let case = |name, proof: String, expected, reason| DpopCase {
        name,
        proof,
        method: "PUT",
        url: DPOP_URL,
        access_token: Some(DPOP_TOKEN),
        now: NOW,
        jkt: key.jkt().to_owned(),
        expected,
        reason,
    };
    Ok(vec![
        case(
            "dpop_valid",
            valid.clone(),
            "valid",
            "a proof by the token's key for this request (the query is ignored)",
        ),
        case(
            "dpop_wrong_ath",
            key.sign_claims(&claims("p-ath", "PUT", DPOP_URL, NOW, &access_token_hash("another.token.x")))?,
            "invalid",
            "ath is the hash of another token",
        ),
        case(
            "dpop_wrong_htu",
            key.sign_claims(&claims("p-htu", "PUT", "https://core.example/workspaces/ws-2/secrets", NOW, &ath))?,
            "invalid",
            "htu names another URL",
        ),
        case(
            "dpop_wrong_htm",
            key.sign_claims(&claims("p-htm", "POST", DPOP_URL, NOW, &ath))?,
            "invalid",
            "htm names another method",
        ),
        case(
            "dpop_stale",
            key.sign_claims(&claims("p-stale", "PUT", DPOP_URL, NOW - 61, &ath))?,
            "invalid",
            "iat more than 60 s before now",
        ),
        case(
            "dpop_future",
            key.sign_claims(&claims("p-future", "PUT", DPOP_URL, NOW + 61, &ath))?,
            "invalid",
            "iat more than 60 s after now",
        ),
        case(
            "dpop_other_key",
            thief.sign_claims(&claims("p-thief", "PUT", DPOP_URL, NOW, &ath))?,
            "invalid",
            "a valid proof, but by another key than the token is bound to",
        ),
        case("dpop_alg_none", none, "invalid", "alg none, no signature"),
        case(
            "dpop_private_jwk",
            key.sign_with_header(&header("EdDSA", &private), &claims("p-private", "PUT", DPOP_URL, NOW, &ath))?,
            "invalid",
            "the jwk carries the private key (d)",
        ),
        case("dpop_replayed", valid, "invalid", "the valid proof again: its jti was seen within the window"),
    ])
}

/// A JSON object kept as raw member texts, in order, so that duplicates, odd value types
/// and exact bytes can be produced.
#[derive(Clone)]
struct Obj(Vec<(String, String)>);

impl Obj {
    /// Replaces the member `name` (or appends it) with the raw JSON text `raw`.
    fn set(mut self, name: &str, raw: impl Into<String>) -> Self {
        let raw = raw.into();
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = raw,
            None => self.0.push((name.to_owned(), raw)),
        }
        self
    }
    /// Appends a member even if one of that name exists.
    fn push(mut self, name: &str, raw: impl Into<String>) -> Self {
        self.0.push((name.to_owned(), raw.into()));
        self
    }
    fn remove(mut self, name: &str) -> Self {
        self.0.retain(|(k, _)| k != name);
        self
    }
    fn text(&self) -> String {
        let members: Vec<String> = self.0.iter().map(|(k, v)| format!("{}:{v}", s(k))).collect();
        format!("{{{}}}", members.join(","))
    }
    fn b64(&self) -> String {
        b64::encode(self.text().as_bytes())
    }
}

/// A JSON string literal.
fn s(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

fn n(v: i64) -> String {
    v.to_string()
}

fn strings(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| s(i)).collect();
    format!("[{}]", items.join(","))
}

struct Key {
    pair: Ed25519KeyPair,
    kid: String,
}

impl Key {
    fn new(seed: &[u8; 32]) -> Result<Key, Box<dyn Error>> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| format!("seed rejected: {e}"))?;
        let kid = thumbprint(pair.public_key().as_ref());
        Ok(Key { pair, kid })
    }
    fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
    fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: b64::encode(self.public()),
            kid: self.kid.clone(),
            alg: "EdDSA",
            use_: "sig",
        }
    }
    fn sign(&self, signing_input: &str) -> Vec<u8> {
        self.pair.sign(signing_input.as_bytes()).as_ref().to_vec()
    }
}

/// `header.payload.signature` from encoded segments, signing them with `key`.
fn signed(h: &str, p: &str, key: &Key) -> String {
    let input = format!("{h}.{p}");
    let sig = key.sign(&input);
    format!("{input}.{}", b64::encode(&sig))
}

fn header(typ: &str, kid: &str) -> Obj {
    Obj(vec![("alg".into(), s("EdDSA")), ("kid".into(), s(kid)), ("typ".into(), s(typ))])
}

/// Sets unused trailing bits in the last character of a base64url segment, which leaves
/// the decoded bytes unchanged for a lax decoder.
fn dirty_trailing_bits(segment: &str) -> Result<String, Box<dyn Error>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if segment.len() % 4 == 0 {
        return Err("segment has no unused trailing bits".into());
    }
    let (head, last) = segment.split_at(segment.len() - 1);
    let index = ALPHABET.iter().position(|c| last.as_bytes().first() == Some(c)).ok_or("not base64url")?;
    let dirty = ALPHABET.get(index | 1).ok_or("index out of range")?;
    Ok(format!("{head}{}", *dirty as char))
}

/// The `=` padding that standard base64 would add to a segment.
fn padding(segment: &str) -> &'static str {
    match segment.len() % 4 {
        2 => "==",
        3 => "=",
        _ => "",
    }
}

/// Adds the group order L to the S half of an Ed25519 signature (both little-endian), giving
/// the malleable twin that a non-strict verifier would also accept.
fn add_order_to_s(sig: &[u8]) -> Vec<u8> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = sig.to_vec();
    let mut carry = 0u16;
    for (i, l) in L.iter().enumerate() {
        if let Some(byte) = out.get_mut(32 + i) {
            let sum = u16::from(*byte) + u16::from(*l) + carry;
            *byte = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
    }
    out
}

struct Builder {
    a: Key,
    b: Key,
    attacker: Key,
    jwk_a_text: String,
    digest: String,
    cases: Vec<Case>,
}

impl Builder {
    fn access_claims(&self) -> Obj {
        Obj(vec![
            ("iss".into(), s(ISSUER)),
            ("sub".into(), s(CALLER)),
            ("client_id".into(), s(CALLER)),
            ("aud".into(), s(AUDIENCE)),
            ("iat".into(), n(NOW - 60)),
            ("nbf".into(), n(NOW - 60)),
            ("exp".into(), n(NOW + 540)),
            ("jti".into(), s("at-vector-0001")),
            ("scope".into(), s("workspaces:read workspaces:write approvals:create")),
            ("tenant".into(), s(TENANT)),
            ("caller_kind".into(), s("agent")),
        ])
    }

    fn capability_claims(&self) -> Obj {
        Obj(vec![
            ("iss".into(), s(ISSUER)),
            ("sub".into(), s(CALLER)),
            ("aud".into(), s(AUDIENCE)),
            ("iat".into(), n(NOW - 30)),
            ("nbf".into(), n(NOW - 30)),
            ("exp".into(), n(NOW + 270)),
            ("jti".into(), s("cap-vector-0001")),
            ("tenant".into(), s(TENANT)),
            ("caller_kind".into(), s("agent")),
            ("action".into(), s(ACTION)),
            ("resource".into(), s(RESOURCE)),
            ("params_digest".into(), s(&self.digest)),
            ("approval_id".into(), s("apr_dGVzc2VyYS12ZWN0b3JzIQ")),
            ("approvers".into(), strings(&["op-alice", "op-bob"])),
            ("bypass".into(), "false".into()),
        ])
    }

    fn binding(&self) -> Binding {
        Binding {
            action: ACTION.into(),
            resource: RESOURCE.into(),
            params_digest: self.digest.clone(),
            caller_sub: CALLER.into(),
            caller_tenant: TENANT.into(),
            caller_actors: Vec::new(),
        }
    }

    /// An access token signed by key A under the usual header.
    fn access(&self, claims: &Obj) -> String {
        signed(&header("at+jwt", &self.a.kid).b64(), &claims.b64(), &self.a)
    }

    /// A capability signed by key A under the usual header.
    fn capability(&self, claims: &Obj) -> String {
        signed(&header("cap+jwt", &self.a.kid).b64(), &claims.b64(), &self.a)
    }

    fn add(&mut self, name: &str, kind: &'static str, token: String, valid: bool, reason: &str) {
        self.add_bound(name, kind, token, valid, reason, None);
    }

    fn add_bound(
        &mut self,
        name: &str,
        kind: &'static str,
        token: String,
        valid: bool,
        reason: &str,
        binding: Option<Binding>,
    ) {
        self.cases.push(Case {
            name: name.to_owned(),
            kind,
            token,
            now: NOW,
            issuer: ISSUER,
            audience: AUDIENCE,
            expected: if valid { "valid" } else { "invalid" },
            reason: reason.to_owned(),
            binding,
        });
    }

    fn valid_cases(&mut self) {
        let t = self.access(&self.access_claims());
        self.add("access_valid", "access", t, true, "a well-formed access token signed by key A");

        let t = signed(&header("at+jwt", &self.b.kid).b64(), &self.access_claims().b64(), &self.b);
        self.add("access_valid_second_key", "access", t, true, "signed by key B, the second key in the JWKS");

        let t = self.access(&self.access_claims().set("aud", strings(&["billing", AUDIENCE])));
        self.add("access_valid_aud_array", "access", t, true, "aud is an array that contains our audience");

        let t = signed(&header("application/at+jwt", &self.a.kid).b64(), &self.access_claims().b64(), &self.a);
        self.add("access_valid_typ_application_prefix", "access", t, true, "typ application/at+jwt (RFC 9068 §2.1)");

        let t = self
            .access(&self.access_claims().set("iat", n(NOW - 600)).set("nbf", n(NOW - 600)).set("exp", n(NOW - 10)));
        self.add(
            "access_valid_expired_within_leeway",
            "access",
            t,
            true,
            "exp passed 10 s ago, inside the 30 s leeway",
        );

        let t =
            self.access(&self.access_claims().set("iat", n(NOW + 20)).set("nbf", n(NOW + 20)).set("exp", n(NOW + 620)));
        self.add(
            "access_valid_issued_within_leeway",
            "access",
            t,
            true,
            "iat and nbf 20 s ahead, inside the 30 s leeway",
        );

        let t = self.access(&self.access_claims().set(
            "act",
            r#"{"sub":"workspace-9","caller_kind":"workspace","act":{"sub":"agent-1","caller_kind":"agent"}}"#,
        ));
        self.add("access_valid_with_actor", "access", t, true, "an exchanged token with a two-deep act chain");

        let t = self.capability(&self.capability_claims());
        let b = Some(self.binding());
        self.add_bound(
            "capability_valid",
            "capability",
            t,
            true,
            "a well-formed capability, bound to the request it is presented with",
            b,
        );

        let t = self.capability(&self.capability_claims().set("approvers", "[]").set("bypass", "true"));
        let b = Some(self.binding());
        self.add_bound("capability_valid_bypass", "capability", t, true, "an install bypass: no approvers", b);
    }

    fn algorithm_cases(&mut self) -> Result<(), Box<dyn Error>> {
        let claims = self.access_claims().b64();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let h = header("at+jwt", &self.a.kid).set("alg", s(alg)).b64();
            let lower = alg.to_lowercase();
            self.add(
                &format!("alg_{lower}_{}_empty_signature", alg_label(alg)),
                "access",
                format!("{h}.{claims}."),
                false,
                &format!("alg {alg:?} with an empty signature"),
            );
            let sig = b64::encode(&self.a.sign(&format!("{h}.{claims}")));
            self.add(
                &format!("alg_{lower}_{}_with_signature", alg_label(alg)),
                "access",
                format!("{h}.{claims}.{sig}"),
                false,
                &format!("alg {alg:?} with a signature that key A made over the signing input"),
            );
        }

        let h = header("at+jwt", &self.a.kid).set("alg", s("HS256")).b64();
        let input = format!("{h}.{claims}");
        let spki =
            [&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..], self.a.public()].concat();
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", std_b64(&spki));
        let hmac_keys: [(&str, Vec<u8>, &str); 4] = [
            ("alg_hs256_public_key_bytes", self.a.public().to_vec(), "the 32 raw bytes of key A"),
            ("alg_hs256_public_key_x", b64::encode(self.a.public()).into_bytes(), "the text of key A's x member"),
            ("alg_hs256_jwk_json", self.jwk_a_text.clone().into_bytes(), "the compact JSON text of key A's JWK"),
            ("alg_hs256_public_key_pem", pem.into_bytes(), "key A as an SPKI PEM text"),
        ];
        for (name, secret, what) in hmac_keys {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), input.as_bytes());
            let token = format!("{input}.{}", b64::encode(tag.as_ref()));
            self.add(name, "access", token, false, &format!("alg HS256, HMAC keyed with {what} (key confusion)"));
        }

        for (name, alg, why) in [
            ("alg_ed25519", "Ed25519", "alg Ed25519 (RFC 9864), while key A is published for EdDSA only"),
            ("alg_lowercase", "eddsa", "alg eddsa: algorithm names are case-sensitive"),
            ("alg_es256", "ES256", "alg ES256 on an Ed25519 key"),
        ] {
            let h = header("at+jwt", &self.a.kid).set("alg", s(alg)).b64();
            let t = signed(&h, &claims, &self.a);
            self.add(name, "access", t, false, why);
        }
        Ok(())
    }

    fn header_cases(&mut self) {
        let claims = self.access_claims().b64();
        let jwk_x = |k: &Key| format!(r#"{{"kty":"OKP","crv":"Ed25519","x":{}}}"#, s(&b64::encode(k.public())));

        let h = header("at+jwt", &self.attacker.kid).set("jwk", jwk_x(&self.attacker)).b64();
        let t = signed(&h, &claims, &self.attacker);
        self.add("header_jwk_attacker_key", "access", t, false, "signed by an unpublished key embedded as jwk");

        let h = header("at+jwt", &self.a.kid).set("jwk", jwk_x(&self.a)).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_jwk_present", "access", t, false, "the header carries jwk (even naming key A)");

        let h = header("at+jwt", &self.a.kid).set("jku", s("https://attacker.example/jwks.json")).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_jku", "access", t, false, "the header carries jku");

        let h = header("at+jwt", &self.a.kid).set("x5u", s("https://attacker.example/cert.pem")).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_x5u", "access", t, false, "the header carries x5u");

        let h = header("at+jwt", &self.a.kid).set("x5c", strings(&["MIIBAA=="])).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_x5c", "access", t, false, "the header carries x5c");

        let h = header("at+jwt", &self.a.kid).set("crit", strings(&["exp"])).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_crit", "access", t, false, "the header carries crit; no extensions are supported");

        let h = header("at+jwt", &self.a.kid).set("b64", "false").push("crit", strings(&["b64"])).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_b64_false", "access", t, false, "the header asks for an unencoded payload (RFC 7797)");

        let h = header("at+jwt", "../../../../dev/null").b64();
        let t = signed(&h, &claims, &self.a);
        self.add("kid_path_traversal", "access", t, false, "kid is a path, not a key id; signed by key A");

        let h = header("at+jwt", &self.attacker.kid).b64();
        let t = signed(&h, &claims, &self.attacker);
        self.add("kid_unknown", "access", t, false, "kid names no published key (signed by that unpublished key)");

        let h = header("at+jwt", &self.b.kid).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("kid_names_other_key", "access", t, false, "signed by key A, kid names key B");

        let h = header("at+jwt", &self.a.kid).remove("kid").b64();
        let t = signed(&h, &claims, &self.a);
        self.add("kid_missing", "access", t, false, "no kid in the header");

        let h = header("at+jwt", &self.a.kid).set("kid", "1").b64();
        let t = signed(&h, &claims, &self.a);
        self.add("kid_not_string", "access", t, false, "kid is a number");

        let h = header("at+jwt", &self.a.kid).push("typ", s("at+jwt")).b64();
        let t = signed(&h, &claims, &self.a);
        self.add("header_duplicate_member", "access", t, false, "typ appears twice in the header");

        let h = Obj(vec![("alg".into(), s("EdDSA")), ("kid".into(), s(&self.a.kid)), ("typ".into(), s("cap+jwt"))])
            .push("typ", s("at+jwt"))
            .b64();
        let t = signed(&h, &claims, &self.a);
        self.add(
            "header_duplicate_typ_last_wins",
            "access",
            t,
            false,
            "typ cap+jwt then at+jwt: a parser keeping the last member would accept",
        );
    }

    fn type_cases(&mut self) {
        let cap = self.capability(&self.capability_claims());
        self.add("typ_capability_as_access", "access", cap, false, "a valid capability presented as an access token");

        let access = self.access(&self.access_claims());
        self.add(
            "typ_access_as_capability",
            "capability",
            access,
            false,
            "a valid access token presented as a capability",
        );

        let claims = self.access_claims().b64();
        let h = header("at+jwt", &self.a.kid).remove("typ").b64();
        let t = signed(&h, &claims, &self.a);
        self.add("typ_missing", "access", t, false, "no typ in the header");

        for (name, typ, why) in [
            ("typ_jwt", "JWT", "typ JWT: a generic JWT is not an access token"),
            ("typ_uppercase", "AT+JWT", "typ AT+JWT: typ is compared exactly"),
            ("typ_capability_application_prefix", "application/cap+jwt", "only cap+jwt is a capability type"),
        ] {
            let h = header(typ, &self.a.kid).b64();
            let (kind, t) = if name.contains("capability") {
                ("capability", signed(&h, &self.capability_claims().b64(), &self.a))
            } else {
                ("access", signed(&h, &claims, &self.a))
            };
            self.add(name, kind, t, false, why);
        }

        let h = header("at+jwt", &self.a.kid).b64();
        let t = signed(&h, &self.capability_claims().b64(), &self.a);
        self.add(
            "typ_access_on_capability_claims",
            "access",
            t,
            false,
            "capability claims under typ at+jwt: no client_id or scope",
        );
    }

    fn time_cases(&mut self) {
        let base = self.access_claims();
        let cases: [(&str, Obj, &str); 7] = [
            (
                "expired",
                base.clone().set("iat", n(NOW - 700)).set("nbf", n(NOW - 700)).set("exp", n(NOW - 100)),
                "exp is 100 s in the past, beyond the 30 s leeway",
            ),
            (
                "expired_at_leeway_boundary",
                base.clone().set("iat", n(NOW - 630)).set("nbf", n(NOW - 630)).set("exp", n(NOW - LEEWAY_SECS)),
                "now equals exp + leeway: expired",
            ),
            (
                "nbf_in_future",
                base.clone().set("iat", n(NOW)).set("nbf", n(NOW + 120)).set("exp", n(NOW + 600)),
                "nbf is 120 s ahead, beyond the leeway",
            ),
            (
                "iat_in_future",
                base.clone().set("iat", n(NOW + 120)).set("nbf", n(NOW)).set("exp", n(NOW + 600)),
                "iat is 120 s ahead, beyond the leeway",
            ),
            (
                "lifetime_over_cap",
                base.clone().set("exp", n(NOW - 60 + MAX_LIFETIME_SECS + 1)),
                "exp - iat is 901 s, over the 900 s cap",
            ),
            (
                "lifetime_long",
                base.clone().set("iat", n(NOW - 60)).set("exp", n(NOW + 86_400)),
                "exp a day ahead: lifetime far over the cap",
            ),
            (
                "exp_not_after_iat",
                base.clone().set("iat", n(NOW + 20)).set("nbf", n(NOW)).set("exp", n(NOW + 10)),
                "exp precedes iat",
            ),
        ];
        for (name, claims, why) in cases {
            let t = self.access(&claims);
            self.add(name, "access", t, false, why);
        }
        let t = self.capability(
            &self.capability_claims().set("exp", n(NOW - 31 - 1)).set("iat", n(NOW - 300)).set("nbf", n(NOW - 300)),
        );
        let b = Some(self.binding());
        self.add_bound("capability_expired", "capability", t, false, "an expired capability", b);
    }

    fn identity_cases(&mut self) {
        let base = self.access_claims();
        let cases: [(&str, Obj, &str); 6] = [
            ("aud_wrong", base.clone().set("aud", s("billing")), "aud names another audience"),
            (
                "aud_array_without_ours",
                base.clone().set("aud", strings(&["billing", "ledger"])),
                "aud is an array without our audience",
            ),
            ("aud_case_variant", base.clone().set("aud", s("Core")), "aud Core: compared exactly"),
            ("iss_wrong", base.clone().set("iss", s("https://attacker.example")), "iss names another issuer"),
            (
                "iss_trailing_slash",
                base.clone().set("iss", s("https://tessera.example/")),
                "iss with a trailing slash: compared exactly",
            ),
            (
                "iss_case_variant",
                base.clone().set("iss", s("https://TESSERA.example")),
                "iss with upper-case host: compared exactly, no normalization",
            ),
        ];
        for (name, claims, why) in cases {
            let t = self.access(&claims);
            self.add(name, "access", t, false, why);
        }
    }

    fn claim_cases(&mut self) {
        for claim in ["iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "scope", "tenant", "caller_kind"] {
            let t = self.access(&self.access_claims().remove(claim));
            self.add(&format!("missing_{claim}"), "access", t, false, &format!("access token without {claim}"));
        }
        for claim in ["sub", "tenant", "action", "resource", "params_digest", "approval_id", "approvers", "bypass"] {
            let t = self.capability(&self.capability_claims().remove(claim));
            let b = Some(self.binding());
            self.add_bound(
                &format!("capability_missing_{claim}"),
                "capability",
                t,
                false,
                &format!("capability without {claim}"),
                b,
            );
        }

        let base = self.access_claims();
        let cases: [(&str, Obj, &str); 13] = [
            ("exp_string", base.clone().set("exp", s(&n(NOW + 540))), "exp is a JSON string"),
            (
                "exp_float",
                base.clone().set("exp", format!("{}.0", NOW + 540)),
                "exp is a JSON number with a fraction part",
            ),
            ("exp_exponent", base.clone().set("exp", "1.80000054e9"), "exp is a JSON number in exponent form"),
            ("nbf_string", base.clone().set("nbf", s(&n(NOW - 60))), "nbf is a JSON string"),
            ("iat_float", base.clone().set("iat", format!("{}.5", NOW - 60)), "iat is not an integer"),
            ("exp_null", base.clone().set("exp", "null"), "exp is null"),
            ("sub_not_string", base.clone().set("sub", "7").set("client_id", "7"), "sub and client_id are numbers"),
            ("sub_empty", base.clone().set("sub", s("")).set("client_id", s("")), "sub and client_id are empty"),
            ("client_id_differs_from_sub", base.clone().set("client_id", s("agent-8")), "client_id is not sub"),
            ("jti_empty", base.clone().set("jti", s("")), "jti is empty"),
            ("tenant_empty", base.clone().set("tenant", s("")), "tenant is empty"),
            ("caller_kind_unknown", base.clone().set("caller_kind", s("robot")), "caller_kind is not a known kind"),
            ("scope_not_string", base.clone().set("scope", strings(&["workspaces:read"])), "scope is an array"),
        ];
        for (name, claims, why) in cases {
            let t = self.access(&claims);
            self.add(name, "access", t, false, why);
        }

        let deep = r#"{"sub":"a1","caller_kind":"agent","act":{"sub":"a2","caller_kind":"agent","act":{"sub":"a3","caller_kind":"agent","act":{"sub":"a4","caller_kind":"agent","act":{"sub":"a5","caller_kind":"agent"}}}}}"#;
        let t = self.access(&self.access_claims().set("act", deep));
        self.add("act_too_deep", "access", t, false, "an act chain five deep; at most four are accepted");

        let t = self.access(&self.access_claims().set("act", r#"{"caller_kind":"workspace"}"#));
        self.add("act_without_sub", "access", t, false, "an act object without sub");

        let t = self.access(&self.access_claims().set("act", r#"{"sub":"workspace-9"}"#));
        self.add("act_without_caller_kind", "access", t, false, "an actor without its caller_kind (design §12)");

        let t = self.access(&self.access_claims().set("act", r#"{"sub":"workspace-9","caller_kind":"robot"}"#));
        self.add("act_unknown_caller_kind", "access", t, false, "an actor of a kind that does not exist");

        let t = self.access(
            &self
                .access_claims()
                .set("act", r#"{"sub":"workspace-9","caller_kind":"workspace","act":{"sub":"agent-1"}}"#),
        );
        self.add("act_nested_without_caller_kind", "access", t, false, "a nested actor without its caller_kind");

        let t = self.access(&self.access_claims().push("sub", s("agent-8")));
        self.add("claims_duplicate_member", "access", t, false, "sub appears twice in the claims");

        let t = self.access(&self.access_claims().set("act", r#"{"sub":"a1","sub":"a2"}"#));
        self.add("claims_nested_duplicate_member", "access", t, false, "a duplicate member inside act");

        let t = self.capability(&self.capability_claims().set("bypass", "true"));
        let b = Some(self.binding());
        self.add_bound("capability_bypass_with_approvers", "capability", t, false, "bypass true with approvers", b);

        let t = self.capability(&self.capability_claims().set("approvers", "[]"));
        let b = Some(self.binding());
        self.add_bound("capability_no_approvers", "capability", t, false, "no approvers and no bypass", b);

        let t = self.capability(&self.capability_claims().set("bypass", s("false")));
        let b = Some(self.binding());
        self.add_bound("capability_bypass_string", "capability", t, false, "bypass is a string", b);
    }

    fn encoding_cases(&mut self) -> Result<(), Box<dyn Error>> {
        let good = self.access(&self.access_claims());
        let mut parts = good.split('.');
        let (Some(h), Some(p), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a signed token has three segments".into());
        };
        let (h, p, sig) = (h.to_owned(), p.to_owned(), sig.to_owned());

        self.add(
            "signature_padded",
            "access",
            format!("{h}.{p}.{sig}{}", padding(&sig)),
            false,
            "the signature segment carries = padding",
        );
        if padding(&p).is_empty() {
            return Err("the payload segment needs no padding; change the claims".into());
        }
        let t = signed(&h, &format!("{p}{}", padding(&p)), &self.a);
        self.add("payload_padded", "access", t, false, "the payload segment carries = padding (signed as sent)");

        let t = format!("{h}.{p}.{}", dirty_trailing_bits(&sig)?);
        self.add(
            "signature_trailing_bits",
            "access",
            t,
            false,
            "non-zero unused bits in the signature's last character",
        );
        let t = signed(&h, &dirty_trailing_bits(&p)?, &self.a);
        self.add("payload_trailing_bits", "access", t, false, "non-zero unused bits in the payload (signed as sent)");

        // A scope of `?` and `>` characters gives `/` and `+` in standard base64 at some offset.
        let std_payload = (0..3)
            .map(|k| {
                let scope = format!("{}???>>>", "x".repeat(k));
                std_b64(self.access_claims().set("scope", s(&scope)).text().as_bytes()).replace('=', "")
            })
            .find(|p| p.contains(['+', '/']))
            .ok_or("no standard-alphabet payload with + or /")?;
        let t = signed(&h, &std_payload, &self.a);
        self.add("payload_standard_alphabet", "access", t, false, "the payload uses the + / alphabet (signed as sent)");

        let mut raw = b64::decode(&sig)?;
        if let Some(byte) = raw.get_mut(10) {
            *byte ^= 0x01;
        }
        self.add("signature_bit_flipped", "access", format!("{h}.{p}.{}", b64::encode(&raw)), false, "one bit flipped");
        let mut flipped = b64::decode(&p)?;
        if let Some(byte) = flipped.get_mut(20) {
            *byte ^= 0x20;
        }
        self.add(
            "payload_bit_flipped",
            "access",
            format!("{h}.{}.{sig}", b64::encode(&flipped)),
            false,
            "one bit of the claims flipped after signing",
        );
        self.add(
            "signature_all_zero",
            "access",
            format!("{h}.{p}.{}", b64::encode(&[0u8; 64])),
            false,
            "64 zero bytes as signature",
        );
        let raw = b64::decode(&sig)?;
        self.add(
            "signature_truncated",
            "access",
            format!("{h}.{p}.{}", b64::encode(raw.get(..63).unwrap_or_default())),
            false,
            "a 63-byte signature",
        );
        self.add(
            "signature_s_plus_order",
            "access",
            format!("{h}.{p}.{}", b64::encode(&add_order_to_s(&raw))),
            false,
            "S replaced by S + L: a malleable twin of a valid signature",
        );
        self.add("too_many_segments", "access", format!("{good}.{sig}"), false, "four segments");
        self.add("five_segments", "access", format!("{h}.{p}.{p}.{p}.{sig}"), false, "five segments, JWE-shaped");
        self.add("too_few_segments", "access", format!("{h}.{p}"), false, "two segments");
        self.add("whitespace", "access", format!(" {good}"), false, "a leading space");
        let json = format!(r#"{{"payload":"{p}","protected":"{h}","signature":"{sig}"}}"#);
        self.add("json_serialization", "access", json, false, "the JWS JSON serialization");

        let mut pad = String::new();
        let oversized = loop {
            let t = self.access(&self.access_claims().set("pad", s(&pad)));
            if t.len() > MAX_TOKEN_BYTES {
                break t;
            }
            pad.push_str("0123456789abcdef");
        };
        self.add("oversized", "access", oversized, false, "a signed token just over 8 KiB");
        Ok(())
    }

    fn binding_cases(&mut self) {
        let t = self.capability(&self.capability_claims());
        let other_digest = params_digest(&serde_json::json!({ "value": "sk-attacker" })).to_string();
        let variants: [(&str, Binding, &str); 5] = [
            (
                "binding_other_resource",
                Binding { resource: "workspaces/ws-123/secrets/AWS_KEY".into(), ..self.binding() },
                "the request targets another resource",
            ),
            (
                "binding_other_params_digest",
                Binding { params_digest: other_digest, ..self.binding() },
                "the request carries other parameters",
            ),
            (
                "binding_other_action",
                Binding { action: "workspace_delete".into(), ..self.binding() },
                "the request is for another action",
            ),
            (
                "binding_other_caller",
                Binding { caller_sub: "agent-8".into(), ..self.binding() },
                "the caller is not the capability's sub",
            ),
            (
                "binding_other_tenant",
                Binding { caller_tenant: "org-2".into(), ..self.binding() },
                "the caller belongs to another tenant",
            ),
        ];
        for (name, binding, why) in variants {
            self.add_bound(name, "capability", t.clone(), false, why, Some(binding));
        }

        // Delegation (design §12): a capability asked for by agent-1 acting for agent-7
        // serves only that chain, not agent-7 alone nor another actor.
        let actor = r#"{"sub":"agent-1","caller_kind":"agent"}"#;
        let t = self.capability(&self.capability_claims().set("act", actor));
        let chain = Binding { caller_actors: vec!["agent-1".into()], ..self.binding() };
        self.add_bound("capability_valid_delegated", "capability", t.clone(), true, "the same chain", Some(chain));
        let b = Some(self.binding());
        self.add_bound("binding_actor_chain_missing", "capability", t.clone(), false, "the subject alone", b);
        let other = Binding { caller_actors: vec!["agent-2".into()], ..self.binding() };
        self.add_bound("binding_other_actor_chain", "capability", t, false, "another actor", Some(other));
        let t = self.capability(&self.capability_claims());
        let chain = Binding { caller_actors: vec!["agent-1".into()], ..self.binding() };
        self.add_bound(
            "binding_actor_chain_added",
            "capability",
            t,
            false,
            "an actor the capability lacks",
            Some(chain),
        );
    }
}

fn alg_label(alg: &str) -> &'static str {
    match alg {
        "none" => "lower",
        "None" => "title",
        "NONE" => "upper",
        _ => "mixed",
    }
}

/// Standard base64 with padding (RFC 4648 §4), for PEM and the alphabet case.
fn std_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn digests() -> Result<Vec<Digest>, Box<dyn Error>> {
    let inputs: [(&'static str, &'static str); 5] = [
        ("worked_example", PARAMS_JSON),
        ("no_body", "{}"),
        ("nested_and_literals", r#"{"b":[3,{"z":null,"y":true}],"a":{"d":false,"c":"x"}}"#),
        ("numbers", r#"{"int":-0,"big":1e21,"small":0.000001,"frac":4.50,"exp":2E-7}"#),
        ("unicode_and_escapes", "{\"\u{fb33}\":\"\u{20ac}\",\"\u{1f600}\":\"tab\\there\",\"\\u0061\":\"\\u00e9\"}"),
    ];
    let mut out = Vec::new();
    for (name, params_json) in inputs {
        let value: Value = serde_json::from_str(params_json)?;
        out.push(Digest {
            name,
            params_json,
            canonical: canonicalize(&value),
            params_digest: params_digest(&value).to_string(),
        });
    }
    Ok(out)
}

fn presented_cases() -> Result<Vec<PresentedCase>, Box<dyn Error>> {
    let inputs: [(&'static str, &'static str, &'static [&'static str], &'static str); 12] = [
        ("worked_example", PARAMS_JSON, &["value"], "the capability cases' parameters: one secret field"),
        (
            "secret_and_nested",
            r#"{"key":"OPENAI_KEY","value":"sk-live-abc","meta":{"tags":["a","b"],"owner":{"team":"ml"}}}"#,
            &["value"],
            "a secret field beside nested objects, which stay as they are",
        ),
        (
            "unicode_secret",
            r#"{"key":"K","value":"pässwörd-€-😀"}"#,
            &["value"],
            "length counts UTF-8 bytes, and the fingerprint is over them",
        ),
        ("no_secret_present", r#"{"key":"K"}"#, &["value"], "an absent secret field stays absent"),
        (
            "no_secret_fields",
            r#"{"name":"ci","limit":9007199254740991}"#,
            &[],
            "a route without secret fields; the largest safe integer",
        ),
        ("large_integer", r#"{"name":"ci","limit":9007199254740993}"#, &[], "refused: an integer beyond 2^53 - 1"),
        (
            "negative_large_integer",
            r#"{"nested":{"n":[-9007199254740992]}}"#,
            &[],
            "refused: an integer beyond -(2^53 - 1), nested",
        ),
        (
            "decimal_exactly_a_double",
            r#"{"ratio":0.25,"limit":1.50e1}"#,
            &[],
            "decimals that are exactly their double, however spelled",
        ),
        (
            "decimal_beyond_2_pow_53",
            r#"{"limit":9007199254740993.0}"#,
            &[],
            "refused: a decimal beyond 2^53 - 1 (it and 9007199254740992.0 are one double)",
        ),
        (
            "decimal_not_its_double",
            r#"{"ratio":0.10000000000000001}"#,
            &[],
            "refused: a decimal that is not exactly the double it becomes (0.1)",
        ),
        ("secret_not_a_string", r#"{"key":"K","value":12345}"#, &["value"], "refused: a secret field must be a string"),
        (
            "forged_secret_mark",
            r#"{"key":"K","note":{"$secret":{"length":3,"sha256":"sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}"#,
            &["value"],
            "refused: no member may be named $secret",
        ),
    ];
    let mut out = Vec::new();
    for (name, params_json, secret_fields, reason) in inputs {
        let refused = tessera::verify::check_numbers(params_json.as_bytes()).is_err();
        let value: Value = serde_json::from_str(params_json)?;
        let shown = if refused { None } else { tessera::verify::presented(&value, secret_fields).ok() };
        out.push(PresentedCase {
            name,
            params_json,
            secret_fields,
            presented_canonical: shown.as_ref().map(canonicalize),
            params_digest: shown.as_ref().map(|v| params_digest(v).to_string()),
            refused: shown.is_none(),
            reason,
        });
    }
    Ok(out)
}

/// Builds both files.
pub fn generate() -> Result<Files, Box<dyn Error>> {
    let a = Key::new(SEED_A)?;
    let b = Key::new(SEED_B)?;
    let attacker = Key::new(SEED_ATTACKER)?;
    let (jwk_a, jwk_b) = (a.jwk(), b.jwk());
    let jwks = serde_json::to_string_pretty(&Jwks { keys: [&jwk_a, &jwk_b] })? + "\n";
    let shown = tessera::verify::presented(&serde_json::from_str(PARAMS_JSON)?, &["value"])?;
    let digest = params_digest(&shown).to_string();

    let mut builder = Builder { jwk_a_text: serde_json::to_string(&jwk_a)?, a, b, attacker, digest, cases: Vec::new() };
    builder.valid_cases();
    builder.algorithm_cases()?;
    builder.header_cases();
    builder.type_cases();
    builder.time_cases();
    builder.identity_cases();
    builder.claim_cases();
    builder.encoding_cases()?;
    builder.binding_cases();

    let vectors = Vectors {
        description: "Tessera token verification vectors. Each case is verified at `now` against jwks.json \
            with `settings`; a capability case with `binding` is also bound to that request and caller. \
            `dpop` cases are proofs checked in order against one replay cache (design §13). \
            See docs/verifying.md. Regenerate with `cargo run --example vectors -- tests/vectors`.",
        jwks: "jwks.json",
        settings: Settings {
            algorithms: ["EdDSA"],
            access_typ: ["at+jwt", "application/at+jwt"],
            capability_typ: ["cap+jwt"],
            leeway_secs: LEEWAY_SECS,
            max_lifetime_secs: MAX_LIFETIME_SECS,
            max_token_bytes: MAX_TOKEN_BYTES,
            max_act_depth: tessera::verify::MAX_ACT_DEPTH,
        },
        digests: digests()?,
        presented: presented_cases()?,
        dpop: dpop_cases()?,
        cases: &builder.cases,
    };
    let vectors = serde_json::to_string_pretty(&vectors)? + "\n";
    Ok(Files { jwks, vectors })
}
