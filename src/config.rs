//! Layered configuration: built-in defaults, then the TOML file named by `TESSERA_CONFIG` or
//! `--config`, then `TESSERA_*` environment variables. An unknown key in the file is an error
//! that names the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{Policy, PolicyFile};
use crate::webhooks::{WebhookConfig, WebhookSecret};

/// A configuration problem, worded for the person who wrote the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

pub use crate::store::DatabaseUrl;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: DatabaseUrl,
    /// Folder of private signing keys.
    pub keys_dir: PathBuf,
    /// Issuer URL, exactly as it appears in `iss`.
    pub issuer: String,
    /// Audience placed in `aud` when a token request names no `resource`.
    pub audience: String,
    /// Every audience a token request may name as `resource` (RFC 8707); empty means just
    /// `audience`. See [`Config::audiences`].
    pub audiences: Vec<String>,
    /// Issuers whose JWTs the `jwt-bearer` grant accepts as assertions (design §14).
    pub federation: Vec<FederationConfig>,
    /// Log format.
    pub log_format: LogFormat,
    /// Whole-request timeout, seconds.
    pub request_timeout_secs: u64,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers (slow clients are disconnected), seconds;
    /// for a connection's first request, counted from the moment it was accepted.
    pub header_read_timeout_secs: u64,
    /// Time a connection may stay open with no request in progress between two requests
    /// (HTTP/1.1 keep-alive and HTTP/2 alike), seconds.
    pub idle_timeout_secs: u64,
    /// How often, at most, the broker signs a checkpoint of the audit chain's head while
    /// records are added, seconds (1 to 60; design §16).
    pub audit_checkpoint_secs: u64,
    /// Most connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Most connections served at once from one address (one IPv6 /64); more are closed on
    /// arrival.
    pub max_connections_per_address: usize,
    /// `Cache-Control: max-age` of the JWKS, seconds.
    pub jwks_max_age_secs: u64,
    /// Leeway the broker allows when it verifies tokens, seconds (at most 60).
    pub leeway_secs: i64,
    /// Failed client authentications allowed per client id and per peer, per minute.
    pub failed_auth_per_minute: u32,
    /// Successful token requests allowed per client per minute; 0 means unlimited.
    pub token_requests_per_minute: u32,
    /// How long an operator console session lasts after sign-in, seconds.
    pub console_session_secs: i64,
    /// Rotate this replica's signing key every this many days; 0 turns the schedule off.
    pub key_rotation_days: u32,
    /// The WebAuthn relying-party id operators' passkeys are bound to: a host name.
    pub passkey_rp_id: String,
    /// The origins the console is served under for passkeys; `None`: the issuer's, with its
    /// host replaced by the relying-party id.
    pub passkey_origins: Option<Vec<String>>,
    /// Whether the token endpoint requires a server nonce in DPoP proofs (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// How long a DPoP nonce stays good, seconds (10 to 3600).
    pub dpop_nonce_secs: u64,
    /// Live DPoP proofs the replay cache keeps per key thumbprint (at most `dpop_replay_per_client`).
    pub dpop_replay_per_key: usize,
    /// Live DPoP proofs the replay cache keeps per client, all its keys together (at most 200 000).
    pub dpop_replay_per_client: usize,
    /// Webhooks told of each new pending approval.
    pub webhooks: Vec<WebhookConfig>,
    /// The policy.
    pub policy: Policy,
    /// The Cedar approval rules' file (design §19), loaded into `policy.rules`.
    pub policy_file: Option<PathBuf>,
}

/// The TOML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    keys_dir: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    audiences: Option<Vec<String>>,
    federation: Option<Vec<FederationConfig>>,
    log_format: Option<LogFormat>,
    request_timeout_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    audit_checkpoint_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    jwks_max_age_secs: Option<u64>,
    leeway_secs: Option<i64>,
    failed_auth_per_minute: Option<u32>,
    token_requests_per_minute: Option<u32>,
    console_session_secs: Option<i64>,
    key_rotation_days: Option<u32>,
    passkey_rp_id: Option<String>,
    passkey_origins: Option<Vec<String>>,
    dpop_nonce: Option<bool>,
    dpop_nonce_secs: Option<u64>,
    dpop_replay_per_key: Option<usize>,
    dpop_replay_per_client: Option<usize>,
    webhooks: Option<Vec<WebhookConfig>>,
    policy: Option<PolicyFile>,
    policy_file: Option<PathBuf>,
}

/// The environment variables read, with the file key each one overrides.
pub const ENV_VARS: [(&str, &str); 27] = [
    ("TESSERA_LISTEN", "listen"),
    ("TESSERA_DATABASE_URL", "database_url"),
    ("TESSERA_KEYS_DIR", "keys_dir"),
    ("TESSERA_ISSUER", "issuer"),
    ("TESSERA_AUDIENCE", "audience"),
    ("TESSERA_AUDIENCES", "audiences"),
    ("TESSERA_LOG_FORMAT", "log_format"),
    ("TESSERA_REQUEST_TIMEOUT_SECS", "request_timeout_secs"),
    ("TESSERA_MAX_BODY_BYTES", "max_body_bytes"),
    ("TESSERA_HEADER_READ_TIMEOUT_SECS", "header_read_timeout_secs"),
    ("TESSERA_IDLE_TIMEOUT_SECS", "idle_timeout_secs"),
    ("TESSERA_AUDIT_CHECKPOINT_SECS", "audit_checkpoint_secs"),
    ("TESSERA_MAX_CONNECTIONS", "max_connections"),
    ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "max_connections_per_address"),
    ("TESSERA_JWKS_MAX_AGE_SECS", "jwks_max_age_secs"),
    ("TESSERA_LEEWAY_SECS", "leeway_secs"),
    ("TESSERA_FAILED_AUTH_PER_MINUTE", "failed_auth_per_minute"),
    ("TESSERA_TOKEN_REQUESTS_PER_MINUTE", "token_requests_per_minute"),
    ("TESSERA_CONSOLE_SESSION_SECS", "console_session_secs"),
    ("TESSERA_KEY_ROTATION_DAYS", "key_rotation_days"),
    ("TESSERA_PASSKEY_RP_ID", "passkey_rp_id"),
    ("TESSERA_PASSKEY_ORIGINS", "passkey_origins"),
    ("TESSERA_DPOP_NONCE", "dpop_nonce"),
    ("TESSERA_DPOP_NONCE_SECS", "dpop_nonce_secs"),
    ("TESSERA_DPOP_REPLAY_PER_KEY", "dpop_replay_per_key"),
    ("TESSERA_DPOP_REPLAY_PER_CLIENT", "dpop_replay_per_client"),
    ("TESSERA_POLICY_FILE", "policy_file"),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            database_url: DatabaseUrl::new("sqlite://data/tessera.db"),
            keys_dir: PathBuf::from("keys"),
            issuer: "http://127.0.0.1:8700".to_owned(),
            audience: "core".to_owned(),
            audiences: Vec::new(),
            federation: Vec::new(),
            log_format: LogFormat::Text,
            request_timeout_secs: 10,
            max_body_bytes: 16 * 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 75,
            audit_checkpoint_secs: 60,
            max_connections: 1024,
            max_connections_per_address: 64,
            jwks_max_age_secs: 300,
            leeway_secs: 30,
            failed_auth_per_minute: 30,
            token_requests_per_minute: 0,
            console_session_secs: 8 * 3600,
            key_rotation_days: 0,
            passkey_rp_id: "localhost".into(),
            passkey_origins: None,
            dpop_nonce: false,
            dpop_nonce_secs: 300,
            dpop_replay_per_key: crate::verify::dpop::DEFAULT_REPLAY_PER_KEY,
            dpop_replay_per_client: crate::verify::dpop::DEFAULT_REPLAY_PER_CLIENT,
            webhooks: Vec::new(),
            policy: Policy::default(),
            policy_file: None,
        }
    }
}

fn parse_env<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError(format!("{name}: cannot parse {value:?}")))
}

/// One trusted issuer of workload identities (`[[federation]]`, design §14).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The issuer, exactly as its tokens' `iss` says.
    pub issuer: String,
    /// Where its JWKS is fetched (and cached as `Cache-Control` says).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A file holding its JWKS instead (read at start, and again when an assertion names a
    /// key the file did not have).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The audience its assertions must name in `aud` for this broker.
    pub audience: String,
}

impl FederationConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let who = &self.issuer;
        if who.is_empty() || who.len() > 512 || who.chars().any(char::is_control) {
            return Err(ConfigError("federation: issuer must be 1 to 512 printable characters".into()));
        }
        match (&self.jwks_uri, &self.jwks_file) {
            (Some(u), None) if u.starts_with("https://") || u.starts_with("http://") => {}
            (Some(u), None) => return Err(ConfigError(format!("federation {who:?}: jwks_uri {u:?} must be http(s)"))),
            (None, Some(_)) => {}
            _ => return Err(ConfigError(format!("federation {who:?}: give exactly one of jwks_uri and jwks_file"))),
        }
        if self.audience.is_empty() || self.audience.len() > 512 {
            return Err(ConfigError(format!("federation {who:?}: audience must be 1 to 512 characters")));
        }
        Ok(())
    }
}

impl Config {
    /// Every audience a token may be issued for: `audiences`, or just `audience`.
    pub fn audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() { vec![self.audience.clone()] } else { self.audiences.clone() }
    }

    /// How long a new key is published before it signs: the JWKS max-age verifiers cache it
    /// for, plus the largest leeway.
    pub fn key_publish_lead_secs(&self) -> i64 {
        self.jwks_max_age_secs as i64 + crate::token::MAX_LEEWAY_SECS
    }

    /// The origins passkey ceremonies may come from: `passkey_origins`, or the issuer's origin
    /// with its host replaced by `passkey_rp_id`.
    pub fn passkey_origins(&self) -> Vec<String> {
        if let Some(o) = &self.passkey_origins {
            return o.clone();
        }
        let (scheme, rest) = self.issuer.split_once("://").unwrap_or(("http", &self.issuer));
        let authority = rest.split('/').next().unwrap_or_default();
        let port = match authority.rsplit_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        match port.filter(|p| !p.is_empty()) {
            Some(p) => vec![format!("{scheme}://{}:{p}", self.passkey_rp_id)],
            None => vec![format!("{scheme}://{}", self.passkey_rp_id)],
        }
    }

    /// The relying party passkeys are checked against.
    pub fn relying_party(&self) -> crate::passkeys::RelyingParty {
        crate::passkeys::RelyingParty { rp_id: self.passkey_rp_id.clone(), origins: self.passkey_origins() }
    }

    /// Loads the configuration from the file named by `--config` (or `TESSERA_CONFIG` in
    /// `env`) and the environment `env`.
    pub fn load(config_path: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let path = config_path.map(Path::to_path_buf).or_else(|| env.get("TESSERA_CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                Self::parse_file(&text).map_err(|e| ConfigError(format!("{}: {}", p.display(), e.0)))?
            }
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        if let Some(v) = file.listen {
            c.listen = parse_env("listen", &v)?;
        }
        if let Some(v) = file.database_url {
            c.database_url = DatabaseUrl::new(v);
        }
        if let Some(v) = file.keys_dir {
            c.keys_dir = v;
        }
        if let Some(v) = file.issuer {
            c.issuer = v;
        }
        if let Some(v) = file.audience {
            c.audience = v;
        }
        if let Some(v) = file.audiences {
            c.audiences = v;
        }
        if let Some(v) = file.federation {
            c.federation = v;
        }
        if let Some(v) = file.log_format {
            c.log_format = v;
        }
        if let Some(v) = file.request_timeout_secs {
            c.request_timeout_secs = v;
        }
        if let Some(v) = file.max_body_bytes {
            c.max_body_bytes = v;
        }
        if let Some(v) = file.header_read_timeout_secs {
            c.header_read_timeout_secs = v;
        }
        if let Some(v) = file.idle_timeout_secs {
            c.idle_timeout_secs = v;
        }
        if let Some(v) = file.audit_checkpoint_secs {
            c.audit_checkpoint_secs = v;
        }
        if let Some(v) = file.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = file.max_connections_per_address {
            c.max_connections_per_address = v;
        }
        if let Some(v) = file.jwks_max_age_secs {
            c.jwks_max_age_secs = v;
        }
        if let Some(v) = file.leeway_secs {
            c.leeway_secs = v;
        }
        if let Some(v) = file.failed_auth_per_minute {
            c.failed_auth_per_minute = v;
        }
        if let Some(v) = file.token_requests_per_minute {
            c.token_requests_per_minute = v;
        }
        if let Some(v) = file.console_session_secs {
            c.console_session_secs = v;
        }
        if let Some(v) = file.key_rotation_days {
            c.key_rotation_days = v;
        }
        if let Some(v) = file.passkey_rp_id {
            c.passkey_rp_id = v;
        }
        if let Some(v) = file.passkey_origins {
            c.passkey_origins = Some(v);
        }
        if let Some(v) = file.dpop_nonce {
            c.dpop_nonce = v;
        }
        if let Some(v) = file.dpop_nonce_secs {
            c.dpop_nonce_secs = v;
        }
        if let Some(v) = file.dpop_replay_per_key {
            c.dpop_replay_per_key = v;
        }
        if let Some(v) = file.dpop_replay_per_client {
            c.dpop_replay_per_client = v;
        }
        if let Some(w) = file.webhooks {
            c.webhooks = w;
        }
        if let Some(p) = &file.policy {
            c.policy = Policy::from_file(p).map_err(|e| ConfigError(e.to_string()))?;
        }
        c.policy_file = file.policy_file;
        c.apply_env(env)?;
        c.check()?;
        c.load_rules()?;
        Ok(c)
    }

    fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        // toml's message for an unknown key reads "unknown field `x`, expected one of …".
        toml::from_str(text).map_err(|e| ConfigError(e.message().to_owned()))
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        for (name, _) in ENV_VARS {
            let Some(v) = env.get(name) else { continue };
            match name {
                "TESSERA_LISTEN" => self.listen = parse_env(name, v)?,
                "TESSERA_DATABASE_URL" => self.database_url = DatabaseUrl::new(v.clone()),
                "TESSERA_KEYS_DIR" => self.keys_dir = PathBuf::from(v),
                "TESSERA_ISSUER" => self.issuer = v.clone(),
                "TESSERA_AUDIENCE" => self.audience = v.clone(),
                "TESSERA_AUDIENCES" => {
                    self.audiences = v.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect()
                }
                "TESSERA_LOG_FORMAT" => {
                    self.log_format = match v.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(ConfigError(format!("{name}: expected text or json"))),
                    }
                }
                "TESSERA_REQUEST_TIMEOUT_SECS" => self.request_timeout_secs = parse_env(name, v)?,
                "TESSERA_MAX_BODY_BYTES" => self.max_body_bytes = parse_env(name, v)?,
                "TESSERA_HEADER_READ_TIMEOUT_SECS" => self.header_read_timeout_secs = parse_env(name, v)?,
                "TESSERA_IDLE_TIMEOUT_SECS" => self.idle_timeout_secs = parse_env(name, v)?,
                "TESSERA_AUDIT_CHECKPOINT_SECS" => self.audit_checkpoint_secs = parse_env(name, v)?,
                "TESSERA_MAX_CONNECTIONS" => self.max_connections = parse_env(name, v)?,
                "TESSERA_MAX_CONNECTIONS_PER_ADDRESS" => self.max_connections_per_address = parse_env(name, v)?,
                "TESSERA_JWKS_MAX_AGE_SECS" => self.jwks_max_age_secs = parse_env(name, v)?,
                "TESSERA_LEEWAY_SECS" => self.leeway_secs = parse_env(name, v)?,
                "TESSERA_FAILED_AUTH_PER_MINUTE" => self.failed_auth_per_minute = parse_env(name, v)?,
                "TESSERA_TOKEN_REQUESTS_PER_MINUTE" => self.token_requests_per_minute = parse_env(name, v)?,
                "TESSERA_CONSOLE_SESSION_SECS" => self.console_session_secs = parse_env(name, v)?,
                "TESSERA_KEY_ROTATION_DAYS" => self.key_rotation_days = parse_env(name, v)?,
                "TESSERA_PASSKEY_RP_ID" => self.passkey_rp_id = v.clone(),
                "TESSERA_PASSKEY_ORIGINS" => {
                    self.passkey_origins =
                        Some(v.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect())
                }
                "TESSERA_DPOP_NONCE" => self.dpop_nonce = parse_env(name, v)?,
                "TESSERA_DPOP_NONCE_SECS" => self.dpop_nonce_secs = parse_env(name, v)?,
                "TESSERA_DPOP_REPLAY_PER_KEY" => self.dpop_replay_per_key = parse_env(name, v)?,
                "TESSERA_DPOP_REPLAY_PER_CLIENT" => self.dpop_replay_per_client = parse_env(name, v)?,
                "TESSERA_POLICY_FILE" => self.policy_file = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        match (env.get("TESSERA_WEBHOOK_URL"), env.get("TESSERA_WEBHOOK_SECRET")) {
            (Some(url), Some(secret)) => self.webhooks.push(WebhookConfig {
                url: url.clone(),
                secret: WebhookSecret::new(secret.clone()),
                format: Default::default(),
            }),
            (None, None) => {}
            _ => return Err(ConfigError("TESSERA_WEBHOOK_URL and TESSERA_WEBHOOK_SECRET go together".into())),
        }
        Ok(())
    }

    /// Loads and validates the approval rules named by `policy_file`, if any: a policy that
    /// does not validate is an error naming it, so the broker does not start.
    pub fn load_rules(&mut self) -> Result<(), ConfigError> {
        self.policy.rules = match &self.policy_file {
            None => None,
            Some(p) => Some(std::sync::Arc::new(crate::policy::rules::Rules::load(p).map_err(|e| ConfigError(e.0))?)),
        };
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let rp = &self.passkey_rp_id;
        if rp.is_empty()
            || crate::passkeys::is_ip_host(rp)
            || !rp.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(ConfigError(
                "passkey_rp_id must be a host name (browsers refuse passkeys on an IP address)".into(),
            ));
        }
        for o in self.passkey_origins() {
            if !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/') {
                return Err(ConfigError(format!("passkey_origins: {o:?} is not an origin like https://host[:port]")));
            }
        }
        let issuer_ok = (self.issuer.starts_with("https://") || self.issuer.starts_with("http://"))
            && !self.issuer.contains(['?', '#'])
            && !self.issuer.ends_with('/');
        if !issuer_ok {
            return Err(ConfigError("issuer must be an http(s) URL without query, fragment or trailing slash".into()));
        }
        if self.audience.is_empty() {
            return Err(ConfigError("audience must not be empty".into()));
        }
        if !self.audiences.is_empty() && !self.audiences.contains(&self.audience) {
            return Err(ConfigError(format!(
                "audiences must include the default audience {:?} (or leave audiences out)",
                self.audience
            )));
        }
        if self.audiences.iter().any(|a| a.is_empty() || a.len() > 256 || a.chars().any(char::is_control)) {
            return Err(ConfigError("audiences: each must be 1 to 256 printable characters".into()));
        }
        let mut issuers = std::collections::HashSet::new();
        for f in &self.federation {
            f.check()?;
            if !issuers.insert(f.issuer.as_str()) {
                return Err(ConfigError(format!("federation: issuer {:?} appears twice", f.issuer)));
            }
        }
        if !(0..=60).contains(&self.leeway_secs) {
            return Err(ConfigError("leeway_secs must be between 0 and 60".into()));
        }
        if self.request_timeout_secs == 0 || self.max_body_bytes < 1024 {
            return Err(ConfigError("request_timeout_secs must be positive and max_body_bytes at least 1024".into()));
        }
        for w in &self.webhooks {
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(ConfigError(format!("webhook url {:?} must be http(s)", w.url)));
            }
        }
        if self.header_read_timeout_secs == 0 || self.max_connections == 0 {
            return Err(ConfigError("header_read_timeout_secs and max_connections must be positive".into()));
        }
        if self.idle_timeout_secs == 0 || self.max_connections_per_address == 0 {
            return Err(ConfigError("idle_timeout_secs and max_connections_per_address must be positive".into()));
        }
        if !(1..=60).contains(&self.audit_checkpoint_secs) {
            return Err(ConfigError("audit_checkpoint_secs must be from 1 to 60 (design §16)".into()));
        }
        if self.failed_auth_per_minute == 0 {
            return Err(ConfigError("failed_auth_per_minute must be at least 1".into()));
        }
        if !(60..=7 * 24 * 3600).contains(&self.console_session_secs) {
            return Err(ConfigError("console_session_secs must be between 60 and 604800 (7 days)".into()));
        }
        if !(10..=3600).contains(&self.dpop_nonce_secs) {
            return Err(ConfigError("dpop_nonce_secs must be between 10 and 3600".into()));
        }
        let most = crate::verify::dpop::DEFAULT_REPLAY_CAPACITY;
        if !(1..=most).contains(&self.dpop_replay_per_client) {
            return Err(ConfigError(format!("dpop_replay_per_client must be between 1 and {most}")));
        }
        if !(1..=self.dpop_replay_per_client).contains(&self.dpop_replay_per_key) {
            return Err(ConfigError("dpop_replay_per_key must be between 1 and dpop_replay_per_client".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8700");
        assert_eq!(c.database_url.expose(), "sqlite://data/tessera.db");
        assert_eq!(c.keys_dir, PathBuf::from("keys"));
        assert_eq!(c.issuer, "http://127.0.0.1:8700");
        assert_eq!(c.audience, "core");
        assert_eq!(c.policy.access_token_ttl_secs, 300);
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "audience = \"file\"\nissuer = \"https://file.example\"\n[policy]\naccess_token_ttl_secs = 60\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &env(&[("TESSERA_AUDIENCE", "env")])).unwrap();
        assert_eq!(c.audience, "env");
        assert_eq!(c.issuer, "https://file.example");
        assert_eq!(c.policy.access_token_ttl_secs, 60);
        let via_env = Config::load(None, &env(&[("TESSERA_CONFIG", path.to_str().unwrap())])).unwrap();
        assert_eq!(via_env.audience, "file");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "audiense = \"x\"\n").unwrap();
        let e = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert!(e.0.contains("audiense"), "{e}");
        std::fs::write(&path, "[policy]\nacess_token_ttl_secs = 5\n").unwrap();
        let e = Config::load(Some(&path), &HashMap::new()).unwrap_err();
        assert!(e.0.contains("acess_token_ttl_secs"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::load(None, &env(&[("TESSERA_LISTEN", "nope")])).is_err());
        assert!(Config::load(None, &env(&[("TESSERA_ISSUER", "ftp://x")])).is_err());
        assert!(Config::load(None, &env(&[("TESSERA_LEEWAY_SECS", "61")])).is_err());
    }

    #[test]
    fn console_session_lifetime() {
        assert_eq!(Config::load(None, &HashMap::new()).unwrap().console_session_secs, 8 * 3600);
        let c = Config::load(None, &env(&[("TESSERA_CONSOLE_SESSION_SECS", "900")])).unwrap();
        assert_eq!(c.console_session_secs, 900);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "console_session_secs = 3600\n").unwrap();
        assert_eq!(Config::load(Some(&path), &HashMap::new()).unwrap().console_session_secs, 3600);
        for bad in ["0", "59", "604801", "-1", "eight hours"] {
            assert!(Config::load(None, &env(&[("TESSERA_CONSOLE_SESSION_SECS", bad)])).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_limits() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!((c.idle_timeout_secs, c.max_connections_per_address), (75, 64));
        let c = Config::load(
            None,
            &env(&[("TESSERA_IDLE_TIMEOUT_SECS", "5"), ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "1024")]),
        )
        .unwrap();
        assert_eq!((c.idle_timeout_secs, c.max_connections_per_address), (5, 1024));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "idle_timeout_secs = 30\nmax_connections_per_address = 8\n").unwrap();
        let c = Config::load(Some(&path), &HashMap::new()).unwrap();
        assert_eq!((c.idle_timeout_secs, c.max_connections_per_address), (30, 8));
        for (name, bad) in [("TESSERA_IDLE_TIMEOUT_SECS", "0"), ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "0")] {
            assert!(Config::load(None, &env(&[(name, bad)])).is_err(), "{name}={bad}");
        }
    }

    #[test]
    fn database_password_is_redacted() {
        let u = DatabaseUrl::new("postgres://tessera:s3cret@127.0.0.1:5432/t");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.redacted(), "postgres://tessera:***@127.0.0.1:5432/t");
    }
}
