//! Signing keys: generated with ring, kept as `<kid>.pem` (PKCS#8, mode 0600) in the keys
//! folder, their public halves registered in the database so that every replica's JWKS lists
//! every live key.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent, Event};
use crate::store::keys as key_rows;
// Reads of the noun, for the handlers and the command line.
pub use crate::store::keys::{KeyRow, list};
use crate::store::{Store, StoreError};
use crate::token::{ALG_EDDSA, TYP_ACCESS, TYP_CAPABILITY, b64, jws};
use crate::verify::{KeyLookup, PublicKey};

/// A key problem at start-up or rotation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the keys folder failed.
    #[error("keys folder {path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key file is not what it must be.
    #[error("key file {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// The RFC 7638 thumbprint of an Ed25519 public key, used as its `kid`.
pub fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64::encode(public_key));
    b64::encode(digest(&SHA256, canonical.as_bytes()).as_ref())
}

/// A private key that signs tokens. Its Debug output shows only the `kid`.
pub struct Signer {
    kid: String,
    key: ed25519_dalek::SigningKey,
    header_access: String,
    header_capability: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    fn new(key: ed25519_dalek::SigningKey) -> Signer {
        let kid = thumbprint(key.verifying_key().as_bytes());
        Signer {
            header_access: jws::encode_header(TYP_ACCESS, &kid),
            header_capability: jws::encode_header(TYP_CAPABILITY, &kid),
            kid,
            key,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.as_ref().as_bytes()
    }

    /// Signs an access token.
    pub fn sign_access<C: Serialize>(&self, claims: &C) -> Result<String, serde_json::Error> {
        jws::sign_ed25519(&self.header_access, claims, &self.key)
    }

    /// Signs a capability token.
    pub fn sign_capability<C: Serialize>(&self, claims: &C) -> Result<String, serde_json::Error> {
        jws::sign_ed25519(&self.header_capability, claims, &self.key)
    }

    /// Signs a JWS of another type (the revocation feed).
    pub fn sign_typed<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, serde_json::Error> {
        jws::sign_ed25519(&jws::encode_header(typ, &self.kid), claims, &self.key)
    }
}

fn pem_encode(der: &[u8]) -> Zeroizing<String> {
    let b = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn pem_decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let body = text.trim().strip_prefix("-----BEGIN PRIVATE KEY-----")?.strip_suffix("-----END PRIVATE KEY-----")?;
    let joined: Zeroizing<String> = Zeroizing::new(body.split_ascii_whitespace().collect());
    STANDARD.decode(joined.as_bytes()).ok().map(Zeroizing::new)
}

/// Creates the keys folder (mode 0700) if needed.
fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// The DER prefix of an RFC 8410 PKCS#8 v1 Ed25519 private key: version 0, the Ed25519
/// algorithm identifier, then the 32-byte seed as an OCTET STRING inside the privateKey
/// OCTET STRING. 16 bytes, then the seed: 48 in all.
const PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The PKCS#8 v1 form (RFC 8410, 48 bytes) of the v2 document ring generates, which has the
/// same 16-byte prefix but for the version (1) and outer length, and the public key (`[1]`)
/// after the seed: 83 bytes. v1 is what `openssl pkey` (OpenSSL 3.0) and Python's `cryptography` read.
fn pkcs8_v1(v2: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    const V2_PREFIX: [u8; 16] =
        [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    if v2.len() != 83 || v2[..16] != V2_PREFIX {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(48));
    out.extend_from_slice(&PKCS8_V1_PREFIX);
    out.extend_from_slice(&v2[16..48]);
    Some(out)
}

/// Parses a PKCS#8 Ed25519 key, v2 (checked: its public key must match the seed) or v1, into
/// the signing key. ring checks the document; the seed sits at bytes 16..48 of both forms.
fn parse_pkcs8(der: &[u8]) -> Option<ed25519_dalek::SigningKey> {
    let pair = Ed25519KeyPair::from_pkcs8(der).ok().or_else(|| {
        // `maybe_unchecked` accepts v1, which carries no public key to check.
        (der.len() == 48 && der[..16] == PKCS8_V1_PREFIX)
            .then(|| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok())
            .flatten()
    })?;
    let seed = Zeroizing::new(<[u8; 32]>::try_from(der.get(16..48)?).ok()?);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // The same key in both libraries, or none.
    (key.verifying_key().as_bytes() == pair.public_key().as_ref()).then_some(key)
}

/// Refuses a keys folder someone else could have planted a key in: it must belong to the
/// user the broker runs as and be writable by nobody else.
fn check_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io_err(dir, format!("belongs to user {}, not to the user the broker runs as ({me})", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io_err(dir, "is writable by group or others, so anyone could plant a key; run chmod 700 on it"));
    }
    Ok(())
}

/// Generates a key, writes `<kid>.pem` (PKCS#8 v1) with mode 0600, and returns its signer.
pub fn generate(dir: &Path) -> Result<Signer, KeyError> {
    ensure_dir(dir)?;
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| io_err(dir, "key generation failed"))?;
    let der = pkcs8_v1(doc.as_ref()).ok_or_else(|| io_err(dir, "generated key has an unexpected form"))?;
    let pair = parse_pkcs8(&der).ok_or_else(|| io_err(dir, "generated key did not parse"))?;
    let signer = Signer::new(pair);
    let path = dir.join(format!("{}.pem", signer.kid));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    f.write_all(pem_encode(&der).as_bytes()).map_err(|e| io_err(&path, e))?;
    f.sync_all().map_err(|e| io_err(&path, e))?;
    Ok(signer)
}

/// Loads every `<kid>.pem` in the folder, refusing files readable by others or whose name is
/// not their key's thumbprint.
pub fn load_dir(dir: &Path) -> Result<Vec<Signer>, KeyError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    check_dir(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let bad = |reason: &str| KeyError::BadKey { path: path.clone(), reason: reason.to_owned() };
        let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad("is readable by group or others; run chmod 600 on it"));
        }
        if std::os::unix::fs::MetadataExt::uid(&meta) != rustix::process::geteuid().as_raw() {
            return Err(bad("belongs to another user than the one the broker runs as"));
        }
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?);
        let der = pem_decode(&text).ok_or_else(|| bad("is not a PKCS#8 PEM file"))?;
        let pair = parse_pkcs8(&der).ok_or_else(|| bad("is not an Ed25519 PKCS#8 key"))?;
        let signer = Signer::new(pair);
        if path.file_stem().and_then(|s| s.to_str()) != Some(signer.kid.as_str()) {
            return Err(bad("its name is not the key's thumbprint (<kid>.pem)"));
        }
        out.push(signer);
    }
    Ok(out)
}

/// The JWK of a registered key.
pub fn jwk(row: &KeyRow) -> serde_json::Value {
    json!({ "kty": "OKP", "crv": "Ed25519", "x": row.public_key, "kid": row.kid, "alg": row.alg, "use": "sig" })
}

/// The signing key of this replica and the published keys of all replicas.
#[derive(Debug)]
pub struct KeyRing {
    store: Store,
    dir: PathBuf,
    signer: RwLock<Arc<Signer>>,
    published: RwLock<Published>,
    /// When an unknown `kid` last caused a refresh; also serialises such refreshes.
    unknown_refresh: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Published {
    keys: HashMap<String, Arc<PublicKey>>,
    jwks: Arc<String>,
}

/// Least time between two database refreshes caused by unknown `kid`s.
const REFRESH_COOLDOWN: Duration = Duration::from_secs(1);

impl KeyRing {
    /// Loads the local keys, registers any the database lacks, generates one if there is
    /// none that may sign, and reads the published set.
    pub async fn load(store: Store, dir: &Path, now: i64) -> Result<KeyRing, KeyError> {
        let signer = match choose(&store, dir, now, true).await? {
            Some(s) => s,
            None => {
                let s = generate(dir)?;
                register(&store, &s, now, now).await?;
                s
            }
        };
        let ring = KeyRing {
            store,
            dir: dir.to_path_buf(),
            signer: RwLock::new(Arc::new(signer)),
            published: RwLock::new(Published::default()),
            unknown_refresh: tokio::sync::Mutex::new(None),
        };
        ring.refresh(now).await?;
        Ok(ring)
    }

    /// Follows rotations: re-reads the keys folder and the database, and signs from now on
    /// with the newest local key whose activation time has come (a rotated-in key is
    /// published well before that). Also re-reads the published keys.
    pub async fn tick(&self, now: i64) -> Result<(), KeyError> {
        if let Some(s) = choose(&self.store, &self.dir, now, false).await? {
            if s.kid != self.signer().kid {
                tracing::info!(kid = %s.kid, "signing with the rotated-in key");
                match self.signer.write() {
                    Ok(mut g) => *g = Arc::new(s),
                    Err(p) => *p.into_inner() = Arc::new(s),
                }
            }
        }
        self.refresh(now).await?;
        Ok(())
    }

    /// The key this replica signs with.
    pub fn signer(&self) -> Arc<Signer> {
        match self.signer.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The JWKS document, as served.
    pub fn jwks(&self) -> Arc<String> {
        match self.published.read() {
            Ok(g) => g.jwks.clone(),
            Err(poisoned) => poisoned.into_inner().jwks.clone(),
        }
    }

    /// Re-reads the published keys from the database.
    pub async fn refresh(&self, now: i64) -> Result<(), StoreError> {
        let rows = key_rows::published(&self.store, now).await?;
        let mut keys = HashMap::new();
        let mut jwks = Vec::new();
        for r in &rows {
            let Ok(raw) = b64::decode(&r.public_key) else { continue };
            if raw.len() != 32 || r.alg != ALG_EDDSA {
                continue;
            }
            keys.insert(r.kid.clone(), Arc::new(PublicKey { kid: r.kid.clone(), alg: r.alg.clone(), raw }));
            jwks.push(jwk(r));
        }
        let doc = Arc::new(json!({ "keys": jwks }).to_string());
        match self.published.write() {
            Ok(mut g) => *g = Published { keys, jwks: doc },
            Err(poisoned) => *poisoned.into_inner() = Published { keys, jwks: doc },
        }
        Ok(())
    }

    /// Refreshes after an unknown `kid` (another replica's new key), at most once per
    /// cooldown. Concurrent callers share one refresh. Returns whether the keys are now as
    /// fresh as the database, so a second lookup is worth making.
    pub async fn refresh_for_unknown(&self, now: i64) -> bool {
        let asked = Instant::now();
        let mut last = self.unknown_refresh.lock().await;
        if let Some(t) = *last {
            if t >= asked {
                return true;
            }
            if t.elapsed() < REFRESH_COOLDOWN {
                return false;
            }
        }
        let ok = self.refresh(now).await.is_ok();
        *last = Some(Instant::now());
        ok
    }
}

impl KeyLookup for KeyRing {
    fn lookup(&self, kid: &str) -> Option<Arc<PublicKey>> {
        match self.published.read() {
            Ok(g) => g.keys.get(kid).cloned(),
            Err(poisoned) => poisoned.into_inner().keys.get(kid).cloned(),
        }
    }
}

/// The local key that should sign at `now`: registered, activated, not yet retired; the most
/// recently activated. With `register_unknown`, local keys the database lacks are registered
/// (a database restored without them, or a first start).
async fn choose(store: &Store, dir: &Path, now: i64, register_unknown: bool) -> Result<Option<Signer>, KeyError> {
    let rows = key_rows::list(store).await?;
    let mut usable: Vec<(i64, Signer)> = Vec::new();
    for signer in load_dir(dir)? {
        match rows.iter().find(|r| r.kid == signer.kid) {
            Some(r) if r.activates_at <= now && r.retired_at.is_none_or(|t| t > now) => {
                usable.push((r.activates_at, signer));
            }
            Some(_) => {}
            None if register_unknown => {
                register(store, &signer, now, now).await?;
                usable.push((now, signer));
            }
            None => {}
        }
    }
    usable.sort_by_key(|(activates, _)| *activates);
    Ok(usable.pop().map(|(_, s)| s))
}

/// The outcome of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The new key.
    pub kid: String,
    /// When it starts signing: it is published from now, so verifiers' caches learn it first.
    pub activates_at: i64,
    /// The keys it replaces, which stop signing at `activates_at`.
    pub retired: Vec<String>,
    /// When the replaced keys leave the JWKS: after the last token they signed has expired.
    pub unpublish_at: i64,
}

/// Rotates the keys of the replica whose folder is `dir`: generates a key, publishes it at
/// once, and schedules it to sign after `publish_lead_secs` (at least the verifiers' cache
/// max-age). The keys it replaces sign until then and stay published until the longest token
/// they can have signed has expired, plus leeway.
pub async fn rotate(
    store: &Store,
    dir: &Path,
    now: i64,
    publish_lead_secs: i64,
    actor: &str,
) -> Result<Rotation, KeyError> {
    let rows = key_rows::list(store).await?;
    let local: Vec<String> = load_dir(dir)?.into_iter().map(|s| s.kid).collect();
    let signer = generate(dir)?;
    let activates_at = now + publish_lead_secs.max(0);
    let unpublish_at = activates_at + crate::token::MAX_LIFETIME_SECS + crate::token::MAX_LEEWAY_SECS;
    let retired: Vec<String> =
        rows.iter().filter(|r| local.contains(&r.kid) && r.retired_at.is_none()).map(|r| r.kid.clone()).collect();
    let row = public_row(&signer, now, activates_at);
    let mut tx = audit::Change::begin(store).await?;
    key_rows::insert(&mut tx, &row).await?;
    for kid in &retired {
        key_rows::retire(&mut tx, kid, activates_at, unpublish_at).await?;
    }
    let event = Event::KeyRotated(audit::event::KeyRotated { activates_at, retired: retired.clone(), unpublish_at });
    tx.record(AuditEvent::of(event, actor, "", &row.kid));
    tx.commit(now).await?;
    Ok(Rotation { kid: row.kid, activates_at, retired, unpublish_at })
}

/// The database row of a signer's public half, published from `now`.
fn public_row(signer: &Signer, now: i64, activates_at: i64) -> KeyRow {
    KeyRow {
        kid: signer.kid.clone(),
        alg: ALG_EDDSA.to_owned(),
        public_key: b64::encode(signer.public_key()),
        created_at: now,
        activates_at,
        retired_at: None,
        unpublish_at: None,
    }
}

/// Registers a signer's public half and audits it.
pub async fn register(store: &Store, signer: &Signer, now: i64, activates_at: i64) -> Result<(), StoreError> {
    let row = public_row(signer, now, activates_at);
    let mut tx = audit::Change::begin(store).await?;
    key_rows::insert(&mut tx, &row).await?;
    let event = Event::KeyRegistered(audit::event::KeyRegistered { alg: row.alg.clone(), activates_at });
    tx.record(AuditEvent::of(event, "broker", "", &row.kid));
    tx.commit(now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(dir.path()).unwrap();
        let path = dir.path().join(format!("{}.pem", s.kid()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].kid(), s.kid());
        let shown = format!("{s:?}");
        assert!(!shown.contains("pair") && !shown.contains("key:") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn refuses_loose_permissions_and_renamed_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(dir.path()).unwrap();
        let path = dir.path().join(format!("{}.pem", s.kid()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_dir(dir.path()), Err(KeyError::BadKey { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&path, dir.path().join("other.pem")).unwrap();
        assert!(matches!(load_dir(dir.path()), Err(KeyError::BadKey { .. })));
    }

    #[test]
    fn a_keys_folder_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        generate(&keys).unwrap();
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(load_dir(&keys).unwrap().len(), 1);
        for loose in [0o777, 0o770, 0o722] {
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = load_dir(&keys).unwrap_err().to_string();
            assert!(err.contains("writable by group or others"), "{loose:o}: {err}");
        }
        // Readable by others is fine: the files themselves are 0600.
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(load_dir(&keys).unwrap().len(), 1);
    }

    #[test]
    fn key_files_are_pkcs8_v1_that_openssl_reads_and_both_forms_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(dir.path()).unwrap();
        let path = dir.path().join(format!("{}.pem", s.kid()));
        let text = std::fs::read_to_string(&path).unwrap();
        let der = pem_decode(&text).unwrap();
        assert_eq!(der.len(), 48, "RFC 8410's 48-byte form");
        assert_eq!(der[..16], PKCS8_V1_PREFIX);

        // Debian's OpenSSL reads it, and derives the same public key.
        let out = std::process::Command::new("openssl").args(["pkey", "-in"]).arg(&path).arg("-noout").output();
        let out = out.expect("openssl is installed (Debian's openssl package)");
        assert!(out.status.success(), "openssl pkey: {}", String::from_utf8_lossy(&out.stderr));
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout[out.stdout.len() - 32..], *s.public_key(), "openssl derives the key's own public key");

        // A v2 file (ring's own form, written by earlier versions) still loads, checked.
        let v2 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = parse_pkcs8(v2.as_ref()).unwrap();
        let v2_path = dir.path().join(format!("{}.pem", thumbprint(key.verifying_key().as_bytes())));
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&v2_path).unwrap();
        f.write_all(pem_encode(v2.as_ref()).as_bytes()).unwrap();
        drop(f);
        assert_eq!(load_dir(dir.path()).unwrap().len(), 2);
        // A v2 document whose public key does not match its seed is refused.
        let mut bad = v2.as_ref().to_vec();
        bad[82] ^= 1;
        assert!(parse_pkcs8(&bad).is_none());
    }

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        // RFC 8037 Appendix A.3: the thumbprint of the example Ed25519 key.
        let x = b64::decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
