//! Proof of possession (DPoP, RFC 9449; design §13): checking proofs, a bounded replay cache,
//! and [`DpopKey`], the helper an agent runtime uses to make proofs.
//!
//! A sender-constrained token carries `cnf: {"jkt": …}`, the RFC 7638 thumbprint of a key its
//! holder keeps out of the model's sight. It is accepted only as `Authorization: DPoP <token>`
//! together with a `DPoP` header: a JWS (`typ: dpop+jwt`, `EdDSA` or `ES256`) signed by that
//! key, whose header carries the public key (`jwk`) and whose claims name this request:
//!
//! - `htm`: the method; `htu`: the URL (scheme, host, port and path; query and fragment are
//!   ignored on both sides);
//! - `iat`: within [`DPOP_WINDOW_SECS`] of now, either way;
//! - `ath`: base64url SHA-256 of the access token, where one is presented;
//! - `jti`: never seen before (by this key) while its `iat` could still be accepted;
//! - `nonce`: where the server asked for one (`DPoP-Nonce`).
//!
//! ```
//! use tessera::verify::dpop::{DpopKey, DpopVerifier, ProofCheck};
//!
//! let key = DpopKey::generate_ed25519().unwrap();
//! let now = 1_700_000_000;
//! let proof = key.proof("GET", "https://core.example/workspaces/ws-1?x=1", Some("the.access.token"), None, now).unwrap();
//! let verifier = DpopVerifier::default();
//! let check = ProofCheck { method: "GET", url: "https://core.example/workspaces/ws-1", access_token: Some("the.access.token"), now };
//! let checked = verifier.verify(&proof, &check, "tc_agent").unwrap();
//! assert_eq!(checked.jkt, key.jkt());
//! // The same proof again is a replay.
//! assert!(verifier.verify(&proof, &check, "tc_agent").is_err());
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey,
};
use serde_json::{Map, Value, json};

use crate::token::{b64, strict_json};

/// The `typ` of a DPoP proof.
pub const TYP_DPOP: &str = "dpop+jwt";
/// The proof algorithms accepted (and listed as `dpop_signing_alg_values_supported`).
pub const DPOP_ALGS: [&str; 2] = ["EdDSA", "ES256"];
/// How far a proof's `iat` may lie from now, either way, in seconds.
pub const DPOP_WINDOW_SECS: i64 = 60;
/// The header carrying a proof.
pub const DPOP_HEADER: &str = "DPoP";
/// The header with which a server hands out a nonce.
pub const DPOP_NONCE_HEADER: &str = "DPoP-Nonce";
/// Largest proof accepted, in bytes.
pub const MAX_PROOF_BYTES: usize = 4096;
/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 128;
/// Entries the default replay cache holds at most.
pub const DEFAULT_REPLAY_CAPACITY: usize = 200_000;

/// JWK members that only a private key has (RFC 7518 §6): a proof carrying any is refused.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Header members that are refused in a proof.
const FORBIDDEN_HEADER_MEMBERS: [&str; 5] = ["crit", "jku", "x5u", "x5c", "b64"];

/// Why a proof was refused. Display text is safe to show and log: it never includes the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// No `DPoP` header where one is needed.
    #[error("a DPoP proof is required")]
    Missing,
    /// More than one `DPoP` header.
    #[error("exactly one DPoP header is allowed")]
    Multiple,
    /// Not a compact JWS of an acceptable shape.
    #[error("malformed DPoP proof: {0}")]
    Malformed(String),
    /// `typ` is not `dpop+jwt`.
    #[error("the proof's typ must be dpop+jwt")]
    Type,
    /// `alg` is not one of EdDSA, ES256 (never `none`, never an HMAC).
    #[error("the proof's algorithm is not accepted (EdDSA or ES256)")]
    Algorithm,
    /// The `jwk` is missing, not a public key of the algorithm, or carries private members.
    #[error("the proof's jwk is not acceptable: {0}")]
    Key(&'static str),
    /// The signature does not verify.
    #[error("the proof's signature does not verify")]
    BadSignature,
    /// `htm` is not the request's method.
    #[error("the proof is for another method")]
    Method,
    /// `htu` is not the request's URL.
    #[error("the proof is for another URL")]
    Url,
    /// `iat` lies too far from now.
    #[error("the proof is stale or from the future (iat more than {DPOP_WINDOW_SECS} s from now)")]
    Stale,
    /// `ath` is missing or not the hash of the presented token.
    #[error("the proof's ath does not match the access token")]
    AccessTokenHash,
    /// This proof (`jti`) was seen before.
    #[error("the proof was already used")]
    Replayed,
    /// The proof's key is not the one the token is bound to.
    #[error("the proof is signed by another key than the token is bound to")]
    WrongKey,
    /// The server requires a nonce and the proof has none, or an old one.
    #[error("a fresh DPoP nonce is required")]
    UseNonce,
    /// The replay cache is full of live entries: refused rather than forgetting a proof.
    #[error("too many proofs in flight; retry shortly")]
    Busy,
}

/// The facts of a verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub jkt: String,
    /// The proof's id.
    pub jti: String,
    /// When it was made.
    pub iat: i64,
    /// The nonce it carries, if any.
    pub nonce: Option<String>,
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request URL as the server is reached (query and fragment are ignored).
    pub url: &'a str,
    /// The access token presented with the proof, if any (then `ath` must be its hash).
    pub access_token: Option<&'a str>,
    /// Now, Unix seconds.
    pub now: i64,
}

/// `ath`: base64url SHA-256 of an access token.
pub fn access_token_hash(token: &str) -> String {
    b64::encode(digest(&SHA256, token.as_bytes()).as_ref())
}

/// The RFC 7638 thumbprint of an Ed25519 public key.
pub fn ed25519_thumbprint(x: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64::encode(x));
    b64::encode(digest(&SHA256, canonical.as_bytes()).as_ref())
}

/// The RFC 7638 thumbprint of a P-256 public key.
pub fn p256_thumbprint(x: &[u8], y: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, b64::encode(x), b64::encode(y));
    b64::encode(digest(&SHA256, canonical.as_bytes()).as_ref())
}

/// A URL reduced to what `htu` is compared on: scheme, host, port and path.
fn normalize_url(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let host = u.host_str()?;
    let port = u.port_or_known_default()?;
    Some(format!("{}://{}:{}{}", u.scheme(), host.to_ascii_lowercase(), port, u.path()))
}

/// Whether two URLs name the same resource for `htu`: equal up to query and fragment as
/// written (the common case, no parsing), else equal once normalized.
fn same_url(htu: &str, expected: &str) -> bool {
    let strip = |u: &str| u.split(['?', '#']).next().unwrap_or(u).len();
    let (a, b) = (&htu[..strip(htu)], &expected[..strip(expected)]);
    if a == b && !a.is_empty() {
        return true;
    }
    matches!((normalize_url(htu), normalize_url(expected)), (Some(x), Some(y)) if x == y)
}

enum ProofKey {
    Ed25519 { x: Vec<u8> },
    P256 { point: Vec<u8> },
}

fn string_member<'m>(map: &'m Map<String, Value>, name: &'static str) -> Result<&'m str, DpopError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DpopError::Key(name)),
    }
}

fn parse_jwk(alg: &str, jwk: &Value) -> Result<(ProofKey, String), DpopError> {
    let Value::Object(map) = jwk else { return Err(DpopError::Key("jwk must be an object")) };
    if PRIVATE_MEMBERS.iter().any(|m| map.contains_key(*m)) {
        return Err(DpopError::Key("it carries private key members"));
    }
    let kty = string_member(map, "kty")?;
    let crv = string_member(map, "crv")?;
    let x = b64::decode(string_member(map, "x")?).map_err(|_| DpopError::Key("x"))?;
    match (alg, kty, crv) {
        ("EdDSA", "OKP", "Ed25519") => {
            if x.len() != 32 || map.contains_key("y") {
                return Err(DpopError::Key("not an Ed25519 public key"));
            }
            let jkt = ed25519_thumbprint(&x);
            Ok((ProofKey::Ed25519 { x }, jkt))
        }
        ("ES256", "EC", "P-256") => {
            let y = b64::decode(string_member(map, "y")?).map_err(|_| DpopError::Key("y"))?;
            if x.len() != 32 || y.len() != 32 {
                return Err(DpopError::Key("not a P-256 public key"));
            }
            let jkt = p256_thumbprint(&x, &y);
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok((ProofKey::P256 { point }, jkt))
        }
        _ => Err(DpopError::Key("its type does not match the algorithm")),
    }
}

/// The claims of a proof that are read; the rest are skipped.
#[derive(serde::Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// Checks a proof's format, signature and claims against `check`, everything but replay (see
/// [`DpopVerifier`], which adds the replay cache).
pub fn check_proof(proof: &str, check: &ProofCheck<'_>) -> Result<CheckedProof, DpopError> {
    let malformed = |m: &str| DpopError::Malformed(m.to_owned());
    if proof.len() > MAX_PROOF_BYTES {
        return Err(malformed("larger than 4 KiB"));
    }
    if !proof.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(malformed("characters outside the base64url alphabet"));
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("a compact JWS has exactly three segments"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(malformed("empty segment"));
    }
    let header_bytes = b64::decode(h).map_err(|_| malformed("header is not canonical base64url"))?;
    let header = strict_json::parse_object(&header_bytes).map_err(|e| DpopError::Malformed(format!("header: {e}")))?;
    if let Some(m) = FORBIDDEN_HEADER_MEMBERS.iter().find(|m| header.contains_key(**m)) {
        return Err(DpopError::Malformed(format!("header member {m:?} is not accepted")));
    }
    if header.get("typ").and_then(Value::as_str) != Some(TYP_DPOP) {
        return Err(DpopError::Type);
    }
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !DPOP_ALGS.contains(&alg) {
        return Err(DpopError::Algorithm);
    }
    let (key, jkt) = parse_jwk(alg, header.get("jwk").ok_or(DpopError::Key("jwk is required"))?)?;
    let signature = b64::decode(s).map_err(|_| malformed("signature is not canonical base64url"))?;
    let signing_input = &proof[..h.len() + 1 + p.len()];
    let verified = match &key {
        ProofKey::Ed25519 { x } => crate::token::jws::ed25519_verify(x, signing_input.as_bytes(), &signature),
        ProofKey::P256 { point } => {
            signature.len() == 64
                && UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signing_input.as_bytes(), &signature)
                    .is_ok()
        }
    };
    if !verified {
        return Err(DpopError::BadSignature);
    }
    let payload = b64::decode(p).map_err(|_| malformed("payload is not canonical base64url"))?;
    // The claims read into a fixed shape: a repeated member of it is refused (serde's
    // duplicate-field error), a claim of the wrong JSON type too, and other members are
    // skipped unread (nesting bounded by the parser's recursion limit).
    let claims: ProofClaims =
        serde_json::from_slice(&payload).map_err(|e| DpopError::Malformed(format!("claims: {e}")))?;
    let jti = claims.jti.as_deref().ok_or_else(|| malformed("jti is required"))?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(malformed("jti must be 1 to 128 characters"));
    }
    let htm = claims.htm.as_deref().ok_or_else(|| malformed("htm is required"))?;
    let htu = claims.htu.as_deref().ok_or_else(|| malformed("htu is required"))?;
    let iat = claims.iat.ok_or_else(|| malformed("iat is required, as an integer"))?;
    if htm != check.method {
        return Err(DpopError::Method);
    }
    if !same_url(htu, check.url) {
        return Err(DpopError::Url);
    }
    if iat.saturating_sub(check.now).abs() > DPOP_WINDOW_SECS {
        return Err(DpopError::Stale);
    }
    match (check.access_token, claims.ath.as_deref()) {
        (Some(token), Some(ath)) if ath == access_token_hash(token) => {}
        (Some(_), _) => return Err(DpopError::AccessTokenHash),
        (None, _) => {}
    }
    Ok(CheckedProof { jkt, jti: jti.to_owned(), iat, nonce: claims.nonce })
}

/// Remembers proof ids until their `iat` could no longer be accepted. Bounded three ways, so
/// that no one fills it for everyone: a key's proofs, a client's proofs (all its keys), and
/// all proofs. A proof beyond a bound is refused ([`DpopError::Busy`]) rather than a seen
/// proof forgotten, and only the key or client at its bound is refused: one client sending
/// proofs as fast as it can turns away itself, not the others. Callers remember a proof only
/// once everything else about the request verified (the token, the client), so that a
/// failing request takes up no room.
#[derive(Debug)]
pub struct ReplayCache {
    seen: Mutex<Seen>,
    limits: ReplayLimits,
    full: [std::sync::atomic::AtomicU64; 3],
}

/// How many live proofs a [`ReplayCache`] holds: per key, per client, in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Per key thumbprint (`jkt`).
    pub per_key: usize,
    /// Per client (every key it uses).
    pub per_client: usize,
    /// In all.
    pub total: usize,
}

/// Live proofs a key may have remembered at once by default: 10 000 over the at most 120 s a
/// proof is remembered, more than 80 requests a second, sustained.
pub const DEFAULT_REPLAY_PER_KEY: usize = 10_000;
/// Live proofs a client may have remembered at once by default, all its keys together.
pub const DEFAULT_REPLAY_PER_CLIENT: usize = 40_000;

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            per_key: DEFAULT_REPLAY_PER_KEY,
            per_client: DEFAULT_REPLAY_PER_CLIENT,
            total: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

/// Which bound refused a proof, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayShare {
    /// The key's.
    Key,
    /// The client's.
    Client,
    /// The whole cache's.
    All,
}

impl ReplayShare {
    /// Every share, in the order of [`ReplayCache::full_refusals`].
    pub const ALL: [ReplayShare; 3] = [ReplayShare::Key, ReplayShare::Client, ReplayShare::All];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayShare::Key => "key",
            ReplayShare::Client => "client",
            ReplayShare::All => "all",
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// `jkt` + `.` + `jti` → when it may be forgotten.
    ids: HashMap<String, i64>,
    per_key: HashMap<String, usize>,
    per_client: HashMap<String, usize>,
    /// When entries may be forgotten → (id, jkt, client): swept in order, so that the counts
    /// are always of live proofs and a full cache costs no scan.
    expiry: std::collections::BTreeMap<i64, Vec<(String, String, String)>>,
}

impl Seen {
    fn sweep(&mut self, now: i64) {
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() >= now {
                break;
            }
            for (id, jkt, client) in entry.remove() {
                self.ids.remove(&id);
                decrement(&mut self.per_key, &jkt);
                decrement(&mut self.per_client, &client);
            }
        }
    }
}

fn decrement(counts: &mut HashMap<String, usize>, name: &str) {
    if let Some(n) = counts.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            counts.remove(name);
        }
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::with_limits(ReplayLimits::default())
    }
}

impl ReplayCache {
    /// A cache holding at most `capacity` live proofs in all, with the default shares per key
    /// and per client (never more than `capacity`).
    pub fn with_capacity(capacity: usize) -> ReplayCache {
        let capacity = capacity.max(1);
        ReplayCache::with_limits(ReplayLimits {
            per_key: DEFAULT_REPLAY_PER_KEY.min(capacity),
            per_client: DEFAULT_REPLAY_PER_CLIENT.min(capacity),
            total: capacity,
        })
    }

    /// A cache with these bounds (each at least 1).
    pub fn with_limits(limits: ReplayLimits) -> ReplayCache {
        let limits = ReplayLimits {
            per_key: limits.per_key.max(1),
            per_client: limits.per_client.max(1),
            total: limits.total.max(1),
        };
        ReplayCache { seen: Mutex::new(Seen::default()), limits, full: Default::default() }
    }

    /// Records `proof`, made by `client`, seen at `now`; an error if it was seen before, or
    /// if the key's, the client's or the cache's bound is reached.
    pub fn remember(&self, proof: &CheckedProof, client: &str, now: i64) -> Result<(), DpopError> {
        // Keyed by key and id: another key cannot use up someone else's ids.
        let id = format!("{}.{}", proof.jkt, proof.jti);
        let until = proof.iat.saturating_add(DPOP_WINDOW_SECS);
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        seen.sweep(now);
        if seen.ids.contains_key(&id) {
            return Err(DpopError::Replayed);
        }
        let count = |m: &HashMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
        let full = if count(&seen.per_key, &proof.jkt) >= self.limits.per_key {
            Some(ReplayShare::Key)
        } else if count(&seen.per_client, client) >= self.limits.per_client {
            Some(ReplayShare::Client)
        } else if seen.ids.len() >= self.limits.total {
            Some(ReplayShare::All)
        } else {
            None
        };
        if let Some(share) = full {
            self.full[share as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(DpopError::Busy);
        }
        seen.ids.insert(id.clone(), until);
        *seen.per_key.entry(proof.jkt.clone()).or_default() += 1;
        *seen.per_client.entry(client.to_owned()).or_default() += 1;
        seen.expiry.entry(until).or_default().push((id, proof.jkt.clone(), client.to_owned()));
        Ok(())
    }

    /// Proofs refused because a bound was reached, by share (key, client, all).
    pub fn full_refusals(&self) -> [(ReplayShare, u64); 3] {
        ReplayShare::ALL.map(|s| (s, self.full[s as usize].load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Proofs remembered now (expired ones may linger until the next proof).
    pub fn len(&self) -> usize {
        match self.seen.lock() {
            Ok(s) => s.ids.len(),
            Err(p) => p.into_inner().ids.len(),
        }
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Proof checks with a replay cache: what a resource server keeps one of.
#[derive(Debug, Default)]
pub struct DpopVerifier {
    cache: ReplayCache,
}

impl DpopVerifier {
    /// A verifier whose replay cache holds at most `capacity` proofs.
    pub fn with_capacity(capacity: usize) -> DpopVerifier {
        DpopVerifier { cache: ReplayCache::with_capacity(capacity) }
    }

    /// A verifier whose replay cache has these bounds.
    pub fn with_limits(limits: ReplayLimits) -> DpopVerifier {
        DpopVerifier { cache: ReplayCache::with_limits(limits) }
    }

    /// Checks `proof` against `check` and remembers it as `client`'s: the same proof twice is
    /// refused.
    pub fn verify(&self, proof: &str, check: &ProofCheck<'_>, client: &str) -> Result<CheckedProof, DpopError> {
        let checked = check_proof(proof, check)?;
        self.cache.remember(&checked, client, check.now)?;
        Ok(checked)
    }

    /// Checks a proof for a token of `client` bound to `jkt`, and remembers it.
    pub fn verify_bound(
        &self,
        proof: &str,
        check: &ProofCheck<'_>,
        jkt: &str,
        client: &str,
    ) -> Result<CheckedProof, DpopError> {
        let checked = check_proof(proof, check)?;
        if checked.jkt != jkt {
            return Err(DpopError::WrongKey);
        }
        self.cache.remember(&checked, client, check.now)?;
        Ok(checked)
    }

    /// The replay cache.
    pub fn cache(&self) -> &ReplayCache {
        &self.cache
    }
}

/// How an access token was presented in `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer <token>`.
    Bearer,
    /// `DPoP <token>`, with a proof in the `DPoP` header.
    Dpop,
}

/// The scheme and token of the one `Authorization` header, if it is `Bearer` or `DPoP`.
pub fn authorization(headers: &http::HeaderMap) -> Option<(Scheme, &str)> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(v), None) = (all.next(), all.next()) else { return None };
    let (scheme, token) = v.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((Scheme::Dpop, token))
    } else {
        None
    }
}

/// The one `DPoP` header's proof: `None` when there is none; an error when there are several
/// or it is not text.
pub fn proof_header(headers: &http::HeaderMap) -> Result<Option<&str>, DpopError> {
    let mut all = headers.get_all(DPOP_HEADER).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(|s| Some(s.trim())).map_err(|_| DpopError::Malformed("not text".into())),
        (Some(_), Some(_)) => Err(DpopError::Multiple),
    }
}

/// Why a verified access token may not be used as presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresentationError {
    /// A bound token was presented as `Bearer`.
    #[error("this token is bound to a key: present it as Authorization: DPoP with a proof")]
    BearerForBound,
    /// An unbound token was presented as `DPoP`.
    #[error("this token is not bound to a key: present it as Authorization: Bearer")]
    DpopForUnbound,
    /// The proof is missing or wrong.
    #[error(transparent)]
    Proof(#[from] DpopError),
}

/// The `WWW-Authenticate` challenge of a refused DPoP presentation (RFC 9449 §7.1).
pub fn challenge(error: &str) -> String {
    format!("DPoP error=\"{error}\", algs=\"{}\"", DPOP_ALGS.join(" "))
}

impl DpopVerifier {
    /// Checks that a verified access token (`claims`) was presented as it must be: a bound
    /// token only as `DPoP` with a valid proof of its key for this request (`method`, `url`,
    /// `now`), an unbound one only as `Bearer` (where a proof sent along is ignored).
    #[allow(clippy::too_many_arguments)] // one request's facts, each needed
    pub fn check_presentation(
        &self,
        claims: &crate::token::AccessClaims,
        scheme: Scheme,
        token: &str,
        proof: Option<&str>,
        method: &str,
        url: &str,
        now: i64,
    ) -> Result<Option<CheckedProof>, PresentationError> {
        match (claims.jkt(), scheme) {
            (None, Scheme::Bearer) => Ok(None),
            (None, Scheme::Dpop) => Err(PresentationError::DpopForUnbound),
            (Some(_), Scheme::Bearer) => Err(PresentationError::BearerForBound),
            (Some(jkt), Scheme::Dpop) => {
                let proof = proof.ok_or(DpopError::Missing)?;
                let check = ProofCheck { method, url, access_token: Some(token), now };
                // The party that holds the key: the current actor, else the subject.
                let holder = claims.act.as_ref().map_or(claims.sub.as_str(), |a| a.sub.as_str());
                Ok(Some(self.verify_bound(proof, &check, jkt, holder)?))
            }
        }
    }
}

enum SigningKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A key an agent runtime holds to make DPoP proofs. Keep it where the model never sees it;
/// its `Debug` shows only the algorithm and thumbprint.
pub struct DpopKey {
    key: SigningKey,
    alg: &'static str,
    jwk: Value,
    jkt: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey").field("alg", &self.alg).field("jkt", &self.jkt).finish_non_exhaustive()
    }
}

fn random_id(rng: &SystemRandom) -> Result<String, DpopError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(|_| DpopError::Malformed("no randomness".into()))?;
    Ok(b64::encode(&b))
}

impl DpopKey {
    /// A fresh Ed25519 key (`EdDSA` proofs).
    pub fn generate_ed25519() -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| DpopError::Key("key generation failed"))?;
        Self::from_pkcs8_ed25519(doc.as_ref())
    }

    /// A fresh P-256 key (`ES256` proofs).
    pub fn generate_es256() -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopError::Key("key generation failed"))?;
        Self::from_pkcs8_es256(doc.as_ref())
    }

    /// An Ed25519 key from a 32-byte seed. For reproducible test vectors: a runtime uses
    /// [`DpopKey::generate_ed25519`].
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Result<DpopKey, DpopError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| DpopError::Key("not an Ed25519 seed"))?;
        let x = pair.public_key().as_ref().to_vec();
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64::encode(&x) });
        Ok(DpopKey {
            key: SigningKey::Ed25519(pair),
            alg: "EdDSA",
            jwk,
            jkt: ed25519_thumbprint(&x),
            rng: SystemRandom::new(),
        })
    }

    /// An Ed25519 key from its PKCS#8 document.
    pub fn from_pkcs8_ed25519(der: &[u8]) -> Result<DpopKey, DpopError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| DpopError::Key("not an Ed25519 PKCS#8 key"))?;
        let x = pair.public_key().as_ref().to_vec();
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64::encode(&x) });
        Ok(DpopKey {
            key: SigningKey::Ed25519(pair),
            alg: "EdDSA",
            jwk,
            jkt: ed25519_thumbprint(&x),
            rng: SystemRandom::new(),
        })
    }

    /// A P-256 key from its PKCS#8 document.
    pub fn from_pkcs8_es256(der: &[u8]) -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| DpopError::Key("not a P-256 PKCS#8 key"))?;
        let point = pair.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64::encode(x), "y": b64::encode(y) });
        let jkt = p256_thumbprint(x, y);
        Ok(DpopKey { key: SigningKey::P256(pair), alg: "ES256", jwk, jkt, rng })
    }

    /// The key's RFC 7638 thumbprint: the `cnf.jkt` of tokens bound to it.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The proof algorithm (`EdDSA` or `ES256`).
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// A proof for one request: `method` and `url` (query and fragment are dropped from
    /// `htu`), the access token it accompanies (`ath`), and the server's nonce if it asked
    /// for one, made at `now` (Unix seconds).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<String, DpopError> {
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let mut claims = json!({ "jti": random_id(&self.rng)?, "htm": method, "htu": htu, "iat": now });
        if let Some(t) = access_token {
            claims["ath"] = json!(access_token_hash(t));
        }
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        self.sign_claims(&claims)
    }

    /// Signs exactly `claims` under this key's proof header (for test vectors and tests of
    /// refusals; agents use [`DpopKey::proof`]).
    pub fn sign_claims(&self, claims: &Value) -> Result<String, DpopError> {
        let header = json!({ "typ": TYP_DPOP, "alg": self.alg, "jwk": self.jwk });
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under exactly `header` (for tests of refusals).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, DpopError> {
        let mut out = b64::encode(header.to_string().as_bytes());
        out.push('.');
        out.push_str(&b64::encode(claims.to_string().as_bytes()));
        let sig = match &self.key {
            SigningKey::Ed25519(pair) => pair.sign(out.as_bytes()).as_ref().to_vec(),
            SigningKey::P256(pair) => {
                pair.sign(&self.rng, out.as_bytes()).map_err(|_| DpopError::Key("signing failed"))?.as_ref().to_vec()
            }
        };
        out.push('.');
        out.push_str(&b64::encode(&sig));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const URL: &str = "https://core.example/workspaces/ws-1";

    fn check(token: Option<&str>) -> ProofCheck<'_> {
        ProofCheck { method: "PUT", url: URL, access_token: token, now: NOW }
    }

    #[test]
    fn both_algorithms_verify_and_bind_to_their_thumbprint() {
        for key in [DpopKey::generate_ed25519().unwrap(), DpopKey::generate_es256().unwrap()] {
            let proof = key.proof("PUT", URL, Some("tok"), None, NOW).unwrap();
            let v = DpopVerifier::default();
            let c = v.verify_bound(&proof, &check(Some("tok")), key.jkt(), "tc_a").unwrap();
            assert_eq!(c.jkt, key.jkt(), "tc_a");
            assert_eq!(v.verify_bound(&proof, &check(Some("tok")), key.jkt(), "tc_a"), Err(DpopError::Replayed));
            let other = DpopKey::generate_ed25519().unwrap();
            let proof = key.proof("PUT", URL, Some("tok"), None, NOW).unwrap();
            assert_eq!(v.verify_bound(&proof, &check(Some("tok")), other.jkt(), "tc_a"), Err(DpopError::WrongKey));
        }
    }

    /// A proof "signed" by a small-order key needs no secret: under the identity point,
    /// R = [S]B verifies any message. Such a proof is refused, however well formed.
    #[test]
    fn a_proof_under_a_small_order_key_is_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let x = b64::encode(&identity);
        let header = json!({ "typ": TYP_DPOP, "alg": "EdDSA", "jwk": { "kty": "OKP", "crv": "Ed25519", "x": x } });
        let claims =
            json!({ "jti": "forged-1", "htm": "PUT", "htu": URL, "iat": NOW, "ath": access_token_hash("tok") });
        let mut proof = b64::encode(header.to_string().as_bytes());
        proof.push('.');
        proof.push_str(&b64::encode(claims.to_string().as_bytes()));
        // R = [1]B (the base point's encoding), S = 1.
        let mut sig = vec![0x58];
        sig.extend_from_slice(&[0x66; 31]);
        sig.push(1);
        sig.extend_from_slice(&[0u8; 31]);
        // The forgery is a valid signature to a check that takes small-order keys.
        let signing_input = proof.clone();
        assert!(
            UnparsedPublicKey::new(&ring::signature::ED25519, &identity).verify(signing_input.as_bytes(), &sig).is_ok()
        );
        proof.push('.');
        proof.push_str(&b64::encode(&sig));
        let v = DpopVerifier::default();
        assert_eq!(v.verify(&proof, &check(Some("tok")), "tc_a"), Err(DpopError::BadSignature));
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1 uses an RSA key; RFC 8037 A.3 gives the Ed25519 example.
        let x = b64::decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(ed25519_thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn refuses_what_does_not_match_the_request() {
        let key = DpopKey::generate_ed25519().unwrap();
        let v = DpopVerifier::default();
        let p = key.proof("POST", URL, Some("tok"), None, NOW).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::Method));
        let p = key.proof("PUT", "https://core.example/workspaces/ws-2", Some("tok"), None, NOW).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::Url));
        let p = key.proof("PUT", "http://core.example/workspaces/ws-1", Some("tok"), None, NOW).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::Url));
        let p = key.proof("PUT", URL, Some("other"), None, NOW).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::AccessTokenHash));
        let p = key.proof("PUT", URL, None, None, NOW).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::AccessTokenHash));
        let p = key.proof("PUT", URL, Some("tok"), None, NOW - 61).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::Stale));
        let p = key.proof("PUT", URL, Some("tok"), None, NOW + 61).unwrap();
        assert_eq!(v.verify(&p, &check(Some("tok")), "tc_a"), Err(DpopError::Stale));
        // Query and fragment are ignored; the default port is the same URL.
        let p = key.proof("PUT", "https://CORE.example:443/workspaces/ws-1?a=b#c", Some("tok"), None, NOW).unwrap();
        assert!(v.verify(&p, &check(Some("tok")), "tc_a").is_ok());
    }

    /// Two values for one claim can never mean two things to two readers: a repeated claim is
    /// refused, as is a claim of the wrong JSON type.
    #[test]
    fn refuses_repeated_and_mistyped_claims() {
        let key = DpopKey::generate_ed25519().unwrap();
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.public_jwk()}).to_string();
        let ath = access_token_hash("tok");
        let sign = |payload: &str| {
            let mut out = b64::encode(header.as_bytes());
            out.push('.');
            out.push_str(&b64::encode(payload.as_bytes()));
            let sig = match &key.key {
                SigningKey::Ed25519(pair) => pair.sign(out.as_bytes()).as_ref().to_vec(),
                SigningKey::P256(_) => unreachable!("an Ed25519 key"),
            };
            format!("{out}.{}", b64::encode(&sig))
        };
        let good = format!(r#"{{"jti":"j1","htm":"PUT","htu":"{URL}","iat":{NOW},"ath":"{ath}","x":{{"y":[1,2]}}}}"#);
        assert!(check_proof(&sign(&good), &check(Some("tok"))).is_ok(), "other members are skipped");
        for bad in [
            format!(
                r#"{{"jti":"j1","htm":"PUT","htu":"https://evil.example/","htu":"{URL}","iat":{NOW},"ath":"{ath}"}}"#
            ),
            format!(r#"{{"jti":"j1","htm":"PUT","htu":"{URL}","iat":{NOW}.0,"ath":"{ath}"}}"#),
            format!(r#"{{"jti":"j1","htm":"PUT","htu":"{URL}","iat":"{NOW}","ath":"{ath}"}}"#),
            format!(r#"{{"jti":7,"htm":"PUT","htu":"{URL}","iat":{NOW},"ath":"{ath}"}}"#),
            format!(r#"{{"htm":"PUT","htu":"{URL}","iat":{NOW},"ath":"{ath}"}}"#),
        ] {
            assert!(matches!(check_proof(&sign(&bad), &check(Some("tok"))), Err(DpopError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn refuses_unsafe_headers() {
        let key = DpopKey::generate_ed25519().unwrap();
        let claims = json!({"jti": "j1", "htm": "PUT", "htu": URL, "iat": NOW, "ath": access_token_hash("tok")});
        let jwk = key.public_jwk().clone();
        let mut private = jwk.clone();
        private["d"] = json!(b64::encode(&[7u8; 32]));
        for (header, want) in [
            (json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}), DpopError::Algorithm),
            (json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}), DpopError::Algorithm),
            (
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
                DpopError::Key("its type does not match the algorithm"),
            ),
            (json!({"typ": "JWT", "alg": "EdDSA", "jwk": jwk}), DpopError::Type),
            (json!({"typ": "dpop+jwt", "alg": "EdDSA"}), DpopError::Key("jwk is required")),
            (
                json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private}),
                DpopError::Key("it carries private key members"),
            ),
        ] {
            let p = key.sign_with_header(&header, &claims).unwrap();
            assert_eq!(check_proof(&p, &check(Some("tok"))), Err(want), "{header}");
        }
        // An unsigned proof (`alg: none`, empty signature).
        let h = b64::encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()}).to_string().as_bytes());
        let c = b64::encode(claims.to_string().as_bytes());
        assert!(check_proof(&format!("{h}.{c}."), &check(Some("tok"))).is_err());
        // Another key's signature under this key's jwk.
        let other = DpopKey::generate_ed25519().unwrap();
        let forged = other
            .sign_with_header(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.public_jwk()}), &claims)
            .unwrap();
        assert_eq!(check_proof(&forged, &check(Some("tok"))), Err(DpopError::BadSignature));
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_only_dead_proofs() {
        let cache = ReplayCache::with_capacity(2);
        let p = |jti: &str, iat: i64| CheckedProof { jkt: "k".into(), jti: jti.into(), iat, nonce: None };
        cache.remember(&p("a", NOW), "tc_a", NOW).unwrap();
        cache.remember(&p("b", NOW), "tc_a", NOW).unwrap();
        assert_eq!(cache.remember(&p("c", NOW), "tc_a", NOW), Err(DpopError::Busy));
        assert_eq!(cache.remember(&p("a", NOW), "tc_a", NOW + DPOP_WINDOW_SECS), Err(DpopError::Replayed));
        // Once "a" and "b" could no longer be accepted, they make room.
        cache.remember(&p("c", NOW + 61), "tc_a", NOW + 61).unwrap();
        assert_eq!(cache.len(), 1);
    }

    /// Review round three, item 5: one key, or one client with many keys, filling its share
    /// of the cache is refused alone; everyone else's proofs are still remembered, and each
    /// refusal is counted by the share that was full.
    #[test]
    fn one_key_or_one_client_filling_its_share_refuses_only_itself() {
        let cache = ReplayCache::with_limits(ReplayLimits { per_key: 3, per_client: 5, total: 8 });
        let p = |jkt: &str, jti: String| CheckedProof { jkt: jkt.into(), jti, iat: NOW, nonce: None };
        for i in 0..3 {
            cache.remember(&p("k1", format!("a{i}")), "tc_greedy", NOW).unwrap();
        }
        assert_eq!(cache.remember(&p("k1", "a3".into()), "tc_greedy", NOW), Err(DpopError::Busy));
        // Another key of the same client has room until the client's share is full.
        cache.remember(&p("k2", "b0".into()), "tc_greedy", NOW).unwrap();
        cache.remember(&p("k2", "b1".into()), "tc_greedy", NOW).unwrap();
        assert_eq!(cache.remember(&p("k3", "c0".into()), "tc_greedy", NOW), Err(DpopError::Busy));
        // Another client is not refused.
        cache.remember(&p("k9", "z0".into()), "tc_other", NOW).unwrap();
        cache.remember(&p("k8", "z1".into()), "tc_third", NOW).unwrap();
        cache.remember(&p("k7", "z2".into()), "tc_fourth", NOW).unwrap();
        // Only the whole cache's bound turns away everyone.
        assert_eq!(cache.remember(&p("k6", "z3".into()), "tc_fifth", NOW), Err(DpopError::Busy));
        let counts: Vec<(&str, u64)> = cache.full_refusals().iter().map(|(s, n)| (s.as_str(), *n)).collect();
        assert_eq!(counts, [("key", 1), ("client", 1), ("all", 1)]);
        // When the greedy client's proofs expire, its counts go with them.
        cache.remember(&p("k1", "a9".into()), "tc_greedy", NOW + DPOP_WINDOW_SECS + 1).unwrap();
        assert_eq!(cache.len(), 1);
    }
}
