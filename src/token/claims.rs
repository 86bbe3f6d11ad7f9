//! The claim sets of the two token types (design §4).

use serde::{Deserialize, Serialize};

use crate::domain::CallerKind;

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience, as Tessera issues it.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `aud` names `ours`, compared exactly.
    pub fn contains(&self, ours: &str) -> bool {
        match self {
            Audience::One(a) => a == ours,
            Audience::Many(list) => list.iter().any(|a| a == ours),
        }
    }
}

/// An RFC 8693 actor: who is acting on behalf of the token's subject (design §12). Every
/// actor of the chain counts wherever a decision is made on the token, so each carries its
/// kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting client's id.
    pub sub: String,
    /// The acting client's kind, fixed at its registration.
    pub caller_kind: CallerKind,
    /// The actor before this one, nested (RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// How many actors the chain holds, this one included.
    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |a| a.depth())
    }

    /// The actors, nearest first.
    pub fn chain(&self) -> Vec<&Actor> {
        let mut out = vec![self];
        let mut next = self.act.as_deref();
        while let Some(a) = next {
            out.push(a);
            next = a.act.as_deref();
        }
        out
    }
}

/// `cnf` (RFC 7800): the key a sender-constrained token is bound to (design §13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint of the holder's DPoP key (RFC 9449 §6).
    pub jkt: String,
}

/// The claims of an access token (`typ: at+jwt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The client id.
    pub sub: String,
    /// The client id (RFC 9068 §2.2).
    pub client_id: String,
    /// The audience.
    pub aud: Audience,
    /// Issued at, seconds.
    pub iat: i64,
    /// Not before, seconds.
    pub nbf: i64,
    /// Expiry, seconds.
    pub exp: i64,
    /// Unique id.
    pub jti: String,
    /// Space-separated granted scopes; never a gated action.
    pub scope: String,
    /// The tenant (org).
    pub tenant: String,
    /// The caller's kind, fixed at registration.
    pub caller_kind: CallerKind,
    /// The bound workspace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The RFC 8693 actor chain of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The key the token is bound to, on a sender-constrained token (DPoP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

impl AccessClaims {
    /// The thumbprint of the key the token is bound to, if it is.
    pub fn jkt(&self) -> Option<&str> {
        self.cnf.as_ref().map(|c| c.jkt.as_str())
    }

    /// The client ids of the actors, nearest first (`[]` when not delegated).
    pub fn actors(&self) -> Vec<&str> {
        self.act.as_ref().map(|a| a.chain().into_iter().map(|x| x.sub.as_str()).collect()).unwrap_or_default()
    }

    /// Whether the subject and every actor of the token are of one of `kinds` (design §12: a
    /// standing that belongs to a kind is not lent to an actor of another).
    pub fn every_party_is(&self, kinds: &[CallerKind]) -> bool {
        kinds.contains(&self.caller_kind)
            && self.act.as_ref().is_none_or(|a| a.chain().iter().all(|x| kinds.contains(&x.caller_kind)))
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// The claims of a capability token (`typ: cap+jwt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The requester's client id: only it may use the capability.
    pub sub: String,
    /// The audience.
    pub aud: Audience,
    /// Issued at, seconds.
    pub iat: i64,
    /// Not before, seconds.
    pub nbf: i64,
    /// Expiry, seconds.
    pub exp: i64,
    /// Unique id; redeemed once.
    pub jti: String,
    /// The requester's tenant.
    pub tenant: String,
    /// The requester's kind.
    pub caller_kind: CallerKind,
    /// The gated action.
    pub action: String,
    /// The target resource.
    pub resource: String,
    /// Digest of the request parameters.
    pub params_digest: String,
    /// The approval this capability came from.
    pub approval_id: String,
    /// The operators that approved (empty with `bypass`).
    pub approvers: Vec<String>,
    /// True only for an audited install bypass.
    pub bypass: bool,
    /// The requester token's actor chain, when the request was made on a delegated token: the
    /// capability serves only that same chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The requester's key, when its token was bound: the capability serves only requests
    /// whose proof that key made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}
