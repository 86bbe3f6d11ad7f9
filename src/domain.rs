//! Validated domain values.
//!
//! Every value that crosses a trust boundary is parsed into one of these types before any
//! code acts on it, so a handler cannot hold an unchecked tenant, scope or digest. This module
//! sits at the bottom: it depends on no other module of the crate.

pub mod approval;
pub mod client;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A value that failed validation. The message names the field and the rule, never echoes
/// more than a short prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidValue {
    /// Which kind of value was being parsed.
    pub what: &'static str,
    /// The rule it broke.
    pub reason: String,
}

impl InvalidValue {
    fn new(what: &'static str, reason: impl Into<String>) -> Self {
        InvalidValue { what, reason: reason.into() }
    }
}

/// The kind of caller a client is. Fixed at registration; nothing a caller sends changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    /// An org-level AI agent (the concierge).
    Agent,
    /// A workspace's agent runtime.
    Workspace,
    /// A human operator.
    Operator,
    /// Provisioning automation.
    Install,
    /// A resource server (core).
    Service,
}

impl CallerKind {
    /// Every kind, in a stable order.
    pub const ALL: [CallerKind; 5] =
        [CallerKind::Agent, CallerKind::Workspace, CallerKind::Operator, CallerKind::Install, CallerKind::Service];

    /// The pinned lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerKind::Agent => "agent",
            CallerKind::Workspace => "workspace",
            CallerKind::Operator => "operator",
            CallerKind::Install => "install",
            CallerKind::Service => "service",
        }
    }

    /// Kinds that may ask for approvals of gated actions.
    pub fn may_request_approvals(self) -> bool {
        matches!(self, CallerKind::Agent | CallerKind::Workspace | CallerKind::Install)
    }
}

impl fmt::Display for CallerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for CallerKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallerKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            InvalidValue::new("caller kind", "expected one of agent, workspace, operator, install, service")
        })
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

fn check_ident(what: &'static str, s: &str, max: usize) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err(InvalidValue::new(what, "must not be empty"));
    }
    if s.len() > max {
        return Err(InvalidValue::new(what, format!("longer than {max} characters")));
    }
    if !s.chars().all(is_ident_char) {
        return Err(InvalidValue::new(what, "only letters, digits, '-', '_' and '.' are allowed"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(InvalidValue::new(what, "must start with a letter or digit"));
    }
    Ok(())
}

macro_rules! ident_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates.
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                check_ident($what, s, $max)?;
                Ok($name(s.to_owned()))
            }
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

ident_newtype!(
    /// A tenant (org) id.
    TenantId, "tenant", 64
);
ident_newtype!(
    /// A client id, as issued at registration.
    ClientId, "client id", 64
);
ident_newtype!(
    /// A workspace id.
    WorkspaceId, "workspace", 64
);
ident_newtype!(
    /// An operator group, such as `security` (design §19): what approval policies and per-group
    /// quorum name.
    GroupName, "group", 64
);

/// Who is answerable for a client (design §19): an e-mail address, an operator client id, or
/// any short printable text. An operator is a request's owner, and never counts towards it,
/// when its client id or its own owner is the requester's owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Owner(String);

impl Owner {
    /// Longest owner text, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Parses and validates: 1 to 200 characters, no control characters, no surrounding space.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue::new("owner", format!("must be 1 to {} characters", Self::MAX_CHARS)));
        }
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(InvalidValue::new("owner", "no control characters or surrounding spaces"));
        }
        Ok(Owner(s.to_owned()))
    }
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One OAuth scope, such as `workspaces:read`: lowercase words joined by `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Scope(String);

impl Scope {
    /// Parses and validates.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.split(':').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if ok {
            Ok(Scope(s.to_owned()))
        } else {
            Err(InvalidValue::new(
                "scope",
                "a scope is lowercase words of a-z, 0-9 and '_' joined by ':', at most 64 characters",
            ))
        }
    }
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An ordered set of scopes; displayed space-separated as in the `scope` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a space-separated list (the `scope` parameter and claim).
    pub fn parse_list(s: &str) -> Result<Self, InvalidValue> {
        s.split_ascii_whitespace().map(Scope::parse).collect::<Result<_, _>>().map(ScopeSet)
    }
    /// Whether the set holds a scope by name.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.as_str() == name)
    }
    /// Whether every scope here is also in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }
    /// The scopes in both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }
    /// The scopes here that are not in `other`.
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.difference(&other.0).cloned().collect())
    }
    /// Iterates in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Adds a scope.
    pub fn insert(&mut self, s: Scope) {
        self.0.insert(s);
    }
    /// Keeps only the scopes for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&Scope) -> bool) {
        self.0.retain(keep);
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

/// A gated action name, such as `secret_write`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Action(String);

impl Action {
    /// Parses and validates the shape; whether it is gated is policy.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Action(s.to_owned()))
        } else {
            Err(InvalidValue::new("action", "an action is a-z, 0-9 and '_', at most 64 characters"))
        }
    }
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Action::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The target of a gated action: `/`-separated segments, such as
/// `workspaces/ws-123/secrets/OPENAI_KEY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Resource(String);

impl Resource {
    /// Parses and validates: 1 to 16 non-empty segments of `A-Z a-z 0-9 - _ . ~ @ : +`, no
    /// `.` or `..` segment, at most 512 characters in all.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const WHAT: &str = "resource";
        if s.is_empty() || s.len() > 512 {
            return Err(InvalidValue::new(WHAT, "must be 1 to 512 characters"));
        }
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() > 16 {
            return Err(InvalidValue::new(WHAT, "at most 16 segments"));
        }
        for seg in segments {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(InvalidValue::new(WHAT, "segments must be non-empty and not '.' or '..'"));
            }
            if !seg.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~@:+".contains(c)) {
                return Err(InvalidValue::new(WHAT, "segments may hold only letters, digits and - _ . ~ @ : +"));
            }
        }
        Ok(Resource(s.to_owned()))
    }
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The workspace this resource lies under, if it is `workspaces/{id}/…`.
    pub fn workspace(&self) -> Option<&str> {
        let mut parts = self.0.split('/');
        match (parts.next(), parts.next()) {
            (Some("workspaces"), Some(id)) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Resource::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `sha256:` followed by the unpadded base64url of a 32-byte SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ParamsDigest(String);

impl ParamsDigest {
    /// Parses and validates: exactly `sha256:` and 43 canonical base64url characters.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = s
            .strip_prefix("sha256:")
            .filter(|rest| rest.len() == 43)
            .and_then(|rest| URL_SAFE_NO_PAD.decode(rest).ok())
            .is_some_and(|bytes| bytes.len() == 32);
        if ok {
            Ok(ParamsDigest(s.to_owned()))
        } else {
            Err(InvalidValue::new(
                "params_digest",
                "expected 'sha256:' followed by 43 base64url characters (unpadded SHA-256)",
            ))
        }
    }
    /// Builds a digest from the 32 raw bytes.
    pub fn from_sha256(bytes: &[u8; 32]) -> Self {
        ParamsDigest(format!("sha256:{}", URL_SAFE_NO_PAD.encode(bytes)))
    }
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParamsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for ParamsDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ParamsDigest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An approval id: `apr_` and 22 base64url characters (128 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ApprovalId(String);

impl ApprovalId {
    /// Parses: anything else is "no such approval" to callers.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = s
            .strip_prefix("apr_")
            .filter(|rest| rest.len() == 22)
            .and_then(|rest| URL_SAFE_NO_PAD.decode(rest).ok())
            .is_some_and(|b| b.len() == 16);
        if ok { Ok(ApprovalId(s.to_owned())) } else { Err(InvalidValue::new("approval id", "malformed")) }
    }
    /// Builds an id from 16 random bytes.
    pub fn from_random(bytes: &[u8; 16]) -> Self {
        ApprovalId(format!("apr_{}", URL_SAFE_NO_PAD.encode(bytes)))
    }
    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

macro_rules! from_str_via_parse {
    ($($name:ident),*) => {$(
        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    )*};
}

from_str_via_parse!(Scope, Action, Resource, ParamsDigest, ApprovalId, Owner);

/// An operator's verdict on an approval: `approve` or `deny`, as stored and as the API says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Approve.
    Approve,
    /// Deny.
    Deny,
}

impl Verdict {
    /// The stored word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

impl FromStr for Verdict {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Verdict::Approve),
            "deny" => Ok(Verdict::Deny),
            _ => Err(InvalidValue::new("decision", "is approve or deny")),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operator's decision was made: with the operator's secret (a token) or a passkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionMethod {
    /// An access token from the operator's secret.
    Secret,
    /// A passkey assertion over the decision.
    Passkey,
}

impl DecisionMethod {
    /// The stored word.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionMethod::Secret => "secret",
            DecisionMethod::Passkey => "passkey",
        }
    }
}

impl FromStr for DecisionMethod {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secret" => Ok(DecisionMethod::Secret),
            "passkey" => Ok(DecisionMethod::Passkey),
            _ => Err(InvalidValue::new("method", "is secret or passkey")),
        }
    }
}

/// The RFC 3339 text of a Unix time (UTC), or the number itself if it is out of range.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_are_checked() {
        assert!(TenantId::parse("org-1").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("-x").is_err());
        assert!(TenantId::parse("a b").is_err());
        assert!(TenantId::parse("a/b").is_err());
        assert!(TenantId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn scopes_parse_and_display() {
        let s = ScopeSet::parse_list("workspaces:write  approvals:create workspaces:read").unwrap();
        assert_eq!(s.to_string(), "approvals:create workspaces:read workspaces:write");
        assert!(ScopeSet::parse_list("Workspaces:read").is_err());
        assert!(ScopeSet::parse_list("a::b").is_err());
        assert!(ScopeSet::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn resources_are_checked() {
        let r = Resource::parse("workspaces/ws-123/secrets/OPENAI_KEY").unwrap();
        assert_eq!(r.workspace(), Some("ws-123"));
        assert_eq!(Resource::parse("orgs/o/tokens").unwrap().workspace(), None);
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a/./b", "a b", "a/b?c", "a\\b"] {
            assert!(Resource::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests_are_checked() {
        let d = ParamsDigest::from_sha256(&[7u8; 32]);
        assert!(ParamsDigest::parse(d.as_str()).is_ok());
        assert!(ParamsDigest::parse("sha256:abc").is_err());
        assert!(ParamsDigest::parse(&format!("sha512:{}", &d.as_str()[7..])).is_err());
        // 43 characters whose last one carries non-zero unused bits is not canonical.
        let mut s = d.as_str().to_owned();
        s.pop();
        s.push('B');
        assert!(ParamsDigest::parse(&s).is_err());
    }

    #[test]
    fn approval_ids_round_trip() {
        let id = ApprovalId::from_random(&[1u8; 16]);
        assert_eq!(ApprovalId::parse(id.as_str()).unwrap(), id);
        assert!(ApprovalId::parse("apr_x").is_err());
        assert!(ApprovalId::parse("../etc/passwd").is_err());
    }
}
