//! The names of the events the audit log records: one enum, so a record cannot be written
//! under a misspelt name. The names on disk are fixed (old chains verify, exports and
//! witnesses read them); `EventName::as_str` is that name. [`Event`] carries each kind's
//! details in its own shape.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventName {
    /// An access token was issued (the token endpoint's batched writer).
    TokenIssued,
    /// One access token was revoked.
    TokenRevoked,
    /// Every token a client held was revoked.
    ClientTokensRevoked,
    /// A client was registered.
    ClientCreated,
    /// A client's secret was replaced.
    ClientSecretRotated,
    /// A client was disabled (its tokens revoked with it).
    ClientDisabled,
    /// An approval was requested.
    ApprovalRequested,
    /// A client took an allowed bypass: approved without a human.
    ApprovalBypassed,
    /// An operator decided.
    ApprovalDecided,
    /// The quorum was met.
    ApprovalApproved,
    /// An operator denied.
    ApprovalDenied,
    /// A request or its capability expired.
    ApprovalExpired,
    /// The requester withdrew its request.
    ApprovalWithdrawn,
    /// A capability was issued.
    CapabilityIssued,
    /// A capability was redeemed.
    CapabilityRedeemed,
    /// A signing key's public half was registered.
    KeyRegistered,
    /// The signing key was rotated.
    KeyRotated,
    /// An operator signed in to the console.
    ConsoleSignedIn,
    /// An operator signed out.
    ConsoleSignedOut,
    /// An administrator issued a passkey enrolment code.
    PasskeyEnrolmentIssued,
    /// An operator enrolled a passkey.
    PasskeyEnrolled,
    /// A passkey was removed (one, or all of a client's).
    PasskeyRemoved,
    /// Records up to a checkpoint moved to an archive file.
    AuditArchived,
    /// An operator client's groups were replaced (design §19).
    ClientGroupsSet,
    /// A request was refused by an approval policy's `forbid`; nothing else was stored.
    ApprovalForbidden,
    /// Another operator acknowledged a break-glass approval, ending its review.
    ApprovalReviewed,
}

impl EventName {
    /// Every event, in the order above.
    pub const ALL: [EventName; 26] = [
        EventName::TokenIssued,
        EventName::TokenRevoked,
        EventName::ClientTokensRevoked,
        EventName::ClientCreated,
        EventName::ClientSecretRotated,
        EventName::ClientDisabled,
        EventName::ApprovalRequested,
        EventName::ApprovalBypassed,
        EventName::ApprovalDecided,
        EventName::ApprovalApproved,
        EventName::ApprovalDenied,
        EventName::ApprovalExpired,
        EventName::ApprovalWithdrawn,
        EventName::CapabilityIssued,
        EventName::CapabilityRedeemed,
        EventName::KeyRegistered,
        EventName::KeyRotated,
        EventName::ConsoleSignedIn,
        EventName::ConsoleSignedOut,
        EventName::PasskeyEnrolmentIssued,
        EventName::PasskeyEnrolled,
        EventName::PasskeyRemoved,
        EventName::AuditArchived,
        EventName::ClientGroupsSet,
        EventName::ApprovalForbidden,
        EventName::ApprovalReviewed,
    ];

    /// The name as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventName::TokenIssued => "token.issued",
            EventName::TokenRevoked => "token.revoked",
            EventName::ClientTokensRevoked => "client.tokens_revoked",
            EventName::ClientCreated => "client.created",
            EventName::ClientSecretRotated => "client.secret_rotated",
            EventName::ClientDisabled => "client.disabled",
            EventName::ApprovalRequested => "approval.requested",
            EventName::ApprovalBypassed => "approval.bypassed",
            EventName::ApprovalDecided => "approval.decided",
            EventName::ApprovalApproved => "approval.approved",
            EventName::ApprovalDenied => "approval.denied",
            EventName::ApprovalExpired => "approval.expired",
            EventName::ApprovalWithdrawn => "approval.withdrawn",
            EventName::CapabilityIssued => "capability.issued",
            EventName::CapabilityRedeemed => "capability.redeemed",
            EventName::KeyRegistered => "key.registered",
            EventName::KeyRotated => "key.rotated",
            EventName::ConsoleSignedIn => "console.signed_in",
            EventName::ConsoleSignedOut => "console.signed_out",
            EventName::PasskeyEnrolmentIssued => "passkey.enrolment_issued",
            EventName::PasskeyEnrolled => "passkey.enrolled",
            EventName::PasskeyRemoved => "passkey.removed",
            EventName::AuditArchived => "audit.archived",
            EventName::ClientGroupsSet => "client.groups_set",
            EventName::ApprovalForbidden => "approval.forbidden",
            EventName::ApprovalReviewed => "approval.reviewed",
        }
    }

    /// The event a stored name means, if any.
    pub fn parse(name: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<EventName> for String {
    fn eq(&self, other: &EventName) -> bool {
        self == other.as_str()
    }
}

/// An empty detail (`{}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

/// `token.revoked`, `client.tokens_revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The client whose token or tokens are revoked.
    pub client_id: String,
    /// A client's tokens issued at or before this time are revoked (`null` for one token).
    pub not_after: Option<i64>,
}

/// A key client's registered key, in `client.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyNamed {
    /// Its `kid`.
    pub kid: String,
    /// Its algorithm.
    pub alg: String,
}

/// A federated identity, in `client.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The issuer.
    pub issuer: String,
    /// The subject.
    pub subject: String,
}

/// `client.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCreated {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its bound workspace.
    pub workspace: Option<String>,
    /// Its registered scopes, space-separated.
    pub scope: String,
    /// The gated actions it may bypass.
    pub allow_bypass: Vec<String>,
    /// The clients that may act for it.
    pub delegates: Vec<String>,
    /// Whether it needs DPoP.
    pub require_dpop: bool,
    /// Its federated identities.
    pub federated: Vec<Identity>,
    /// Its key, for a key client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyNamed>,
    /// Its operator groups (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Its owner (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `client.groups_set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsSet {
    /// The groups before.
    pub before: Vec<String>,
    /// The groups now.
    pub groups: Vec<String>,
}

/// `approval.forbidden`: what was asked, and the policies that forbade it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forbidden {
    /// The gated action.
    pub action: String,
    /// Its resource.
    pub resource: String,
    /// The digest of the presented parameters.
    pub params_digest: String,
    /// The `@id` of each policy that forbade it.
    pub policies: Vec<String>,
}

/// `client.disabled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDisabled {
    /// Always true: disabling revokes its tokens.
    pub tokens_revoked: bool,
    /// Set when the stale sweep disabled it: the policy's `stale_after_days` it was unused for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_days: Option<u32>,
    /// With `stale_after_days`: its last use (`null` if it never got a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// `client.secret_rotated`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRotated {
    /// With a grace: when the replaced secret stops working (absent: it stopped at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<i64>,
}

/// `approval.requested`: what the operator will be shown and the capability binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    /// The gated action.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The parameters as presented.
    pub params: serde_json::Value,
    /// Their digest.
    pub params_digest: String,
    /// The requester's reason.
    pub reason: String,
    /// The actors of a delegated request, nearest first.
    pub actors: Vec<String>,
    /// The key the requester's token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf_jkt: Option<String>,
}

/// `approval.bypassed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bypassed {
    /// The reason the caller gave.
    pub bypass_reason: String,
    /// The gated action.
    pub action: String,
    /// The resource.
    pub resource: String,
}

/// `approval.decided`; a passkey decision carries its assertion, so it can be checked again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    /// `approve` or `deny`.
    pub decision: crate::domain::Verdict,
    /// The operator's note.
    pub note: Option<String>,
    /// How it was made.
    pub method: crate::domain::DecisionMethod,
    /// The digest the passkey signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_digest: Option<String>,
    /// The challenge's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The passkey's credential id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The assertion's authenticator data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_data: Option<String>,
    /// The assertion's client data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_data: Option<String>,
    /// The assertion's signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// A break-glass approval: this operator approved alone (design §19). Absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// `approval.approved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approved {
    /// How many enabled operators had approved.
    pub approvals: i64,
}

/// `approval.expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expired {
    /// `request` or `capability`.
    pub expired: String,
}

/// `capability.issued`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityIssued {
    /// The capability's `jti`.
    pub jti: String,
    /// Its expiry.
    pub exp: Option<i64>,
    /// The requester (a decided request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// Set on a bypass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<bool>,
}

/// `capability.redeemed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeemed {
    /// The capability's `jti`.
    pub jti: String,
    /// Its action.
    pub action: String,
    /// Its resource.
    pub resource: String,
    /// Its digest.
    pub params_digest: String,
    /// The redeemer's actors, nearest first.
    pub actors: Vec<String>,
}

/// `key.registered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRegistered {
    /// Its algorithm.
    pub alg: String,
    /// When it signs from.
    pub activates_at: i64,
}

/// `key.rotated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotated {
    /// When the new key signs from.
    pub activates_at: i64,
    /// The keys it retires.
    pub retired: Vec<String>,
    /// When those stop being published.
    pub unpublish_at: i64,
}

/// `console.signed_in`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedIn {
    /// The first 16 hex digits of the session's stored key.
    pub session: String,
    /// When it ends.
    pub expires_at: i64,
    /// `secret` or `passkey`.
    pub method: String,
}

/// `console.signed_out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOut {
    /// The first 16 hex digits of the session's stored key.
    pub session: String,
}

/// `passkey.enrolment_issued`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentIssued {
    /// When the code stops working.
    pub expires_at: i64,
}

/// `passkey.enrolled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// The credential id.
    pub credential_id: String,
    /// Its COSE algorithm.
    pub alg: i64,
    /// Its public key.
    pub public_key: String,
    /// The name the operator gave it.
    pub name: String,
}

/// `passkey.removed`: one by the operator, or all by an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// The one removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// Set when all were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// How many, when all were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<u64>,
}

/// `audit.archived`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archived {
    /// How many records moved.
    pub records: i64,
    /// The last one's sequence number.
    pub last_seq: i64,
    /// Its hash.
    pub hash: String,
}

/// An event with its details: each kind has its own shape, written as the JSON object the
/// audit log has always stored for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The token endpoint's facts, written by its own canonical writer (its hot path).
    TokenIssued(serde_json::Value),
    /// One token revoked.
    TokenRevoked(Revoked),
    /// A client's tokens revoked.
    ClientTokensRevoked(Revoked),
    /// A client registered.
    ClientCreated(Box<ClientCreated>),
    /// A secret replaced.
    ClientSecretRotated(SecretRotated),
    /// A client disabled.
    ClientDisabled(ClientDisabled),
    /// An approval requested.
    ApprovalRequested(Box<Requested>),
    /// A bypass taken.
    ApprovalBypassed(Bypassed),
    /// An operator decided.
    ApprovalDecided(Box<Decided>),
    /// The quorum met.
    ApprovalApproved(Approved),
    /// An operator denied.
    ApprovalDenied,
    /// A request or capability expired.
    ApprovalExpired(Expired),
    /// A request withdrawn.
    ApprovalWithdrawn,
    /// A capability issued.
    CapabilityIssued(CapabilityIssued),
    /// A capability redeemed.
    CapabilityRedeemed(Redeemed),
    /// A key registered.
    KeyRegistered(KeyRegistered),
    /// The key rotated.
    KeyRotated(KeyRotated),
    /// A console sign-in.
    ConsoleSignedIn(SignedIn),
    /// A console sign-out.
    ConsoleSignedOut(SignedOut),
    /// An enrolment code issued.
    PasskeyEnrolmentIssued(EnrolmentIssued),
    /// A passkey enrolled.
    PasskeyEnrolled(Enrolled),
    /// Passkeys removed.
    PasskeyRemoved(Removed),
    /// Records archived.
    AuditArchived(Archived),
    /// Groups replaced.
    ClientGroupsSet(GroupsSet),
    /// A request forbidden by policy.
    ApprovalForbidden(Box<Forbidden>),
    /// A break-glass approval acknowledged.
    ApprovalReviewed,
}

impl Event {
    /// Its name.
    pub fn name(&self) -> EventName {
        match self {
            Event::TokenIssued(_) => EventName::TokenIssued,
            Event::TokenRevoked(_) => EventName::TokenRevoked,
            Event::ClientTokensRevoked(_) => EventName::ClientTokensRevoked,
            Event::ClientCreated(_) => EventName::ClientCreated,
            Event::ClientSecretRotated(_) => EventName::ClientSecretRotated,
            Event::ClientDisabled(_) => EventName::ClientDisabled,
            Event::ApprovalRequested(_) => EventName::ApprovalRequested,
            Event::ApprovalBypassed(_) => EventName::ApprovalBypassed,
            Event::ApprovalDecided(_) => EventName::ApprovalDecided,
            Event::ApprovalApproved(_) => EventName::ApprovalApproved,
            Event::ApprovalDenied => EventName::ApprovalDenied,
            Event::ApprovalExpired(_) => EventName::ApprovalExpired,
            Event::ApprovalWithdrawn => EventName::ApprovalWithdrawn,
            Event::CapabilityIssued(_) => EventName::CapabilityIssued,
            Event::CapabilityRedeemed(_) => EventName::CapabilityRedeemed,
            Event::KeyRegistered(_) => EventName::KeyRegistered,
            Event::KeyRotated(_) => EventName::KeyRotated,
            Event::ConsoleSignedIn(_) => EventName::ConsoleSignedIn,
            Event::ConsoleSignedOut(_) => EventName::ConsoleSignedOut,
            Event::PasskeyEnrolmentIssued(_) => EventName::PasskeyEnrolmentIssued,
            Event::PasskeyEnrolled(_) => EventName::PasskeyEnrolled,
            Event::PasskeyRemoved(_) => EventName::PasskeyRemoved,
            Event::AuditArchived(_) => EventName::AuditArchived,
            Event::ClientGroupsSet(_) => EventName::ClientGroupsSet,
            Event::ApprovalForbidden(_) => EventName::ApprovalForbidden,
            Event::ApprovalReviewed => EventName::ApprovalReviewed,
        }
    }

    /// Its details, as the JSON object stored, taking the event (the token endpoint's facts
    /// are moved, not copied).
    pub fn into_detail(self) -> serde_json::Value {
        match self {
            Event::TokenIssued(d) => d,
            other => other.detail(),
        }
    }

    /// Its details, as the JSON object stored.
    pub fn detail(&self) -> serde_json::Value {
        fn v<T: Serialize>(t: &T) -> serde_json::Value {
            serde_json::to_value(t).unwrap_or_else(|_| serde_json::json!({}))
        }
        match self {
            Event::TokenIssued(d) => d.clone(),
            Event::TokenRevoked(d) | Event::ClientTokensRevoked(d) => v(d),
            Event::ClientCreated(d) => v(d),
            Event::ClientSecretRotated(d) => v(d),
            Event::ApprovalDenied | Event::ApprovalWithdrawn | Event::ApprovalReviewed => v(&Nothing {}),
            Event::ClientDisabled(d) => v(d),
            Event::ApprovalRequested(d) => v(d),
            Event::ApprovalBypassed(d) => v(d),
            Event::ApprovalDecided(d) => v(d),
            Event::ApprovalApproved(d) => v(d),
            Event::ApprovalExpired(d) => v(d),
            Event::CapabilityIssued(d) => v(d),
            Event::CapabilityRedeemed(d) => v(d),
            Event::KeyRegistered(d) => v(d),
            Event::KeyRotated(d) => v(d),
            Event::ConsoleSignedIn(d) => v(d),
            Event::ConsoleSignedOut(d) => v(d),
            Event::PasskeyEnrolmentIssued(d) => v(d),
            Event::PasskeyEnrolled(d) => v(d),
            Event::PasskeyRemoved(d) => v(d),
            Event::AuditArchived(d) => v(d),
            Event::ClientGroupsSet(d) => v(d),
            Event::ApprovalForbidden(d) => v(d),
        }
    }

    /// Reads a stored record's details as the event `name` says they are shaped; anything
    /// else (a member too many or missing, a wrong type) is refused, naming the event.
    pub fn read(name: &str, detail: &str) -> Result<Event, String> {
        fn r<T: serde::de::DeserializeOwned>(name: &str, detail: &str) -> Result<T, String> {
            serde_json::from_str(detail).map_err(|e| format!("{name}: {e}"))
        }
        let Some(event) = EventName::parse(name) else { return Err(format!("{name}: not an event")) };
        Ok(match event {
            EventName::TokenIssued => Event::TokenIssued(r(name, detail)?),
            EventName::TokenRevoked => Event::TokenRevoked(r(name, detail)?),
            EventName::ClientTokensRevoked => Event::ClientTokensRevoked(r(name, detail)?),
            EventName::ClientCreated => Event::ClientCreated(r(name, detail)?),
            EventName::ClientSecretRotated => Event::ClientSecretRotated(r(name, detail)?),
            EventName::ClientDisabled => Event::ClientDisabled(r(name, detail)?),
            EventName::ApprovalRequested => Event::ApprovalRequested(r(name, detail)?),
            EventName::ApprovalBypassed => Event::ApprovalBypassed(r(name, detail)?),
            EventName::ApprovalDecided => Event::ApprovalDecided(r(name, detail)?),
            EventName::ApprovalApproved => Event::ApprovalApproved(r(name, detail)?),
            EventName::ApprovalDenied => r::<Nothing>(name, detail).map(|_| Event::ApprovalDenied)?,
            EventName::ApprovalExpired => Event::ApprovalExpired(r(name, detail)?),
            EventName::ApprovalWithdrawn => r::<Nothing>(name, detail).map(|_| Event::ApprovalWithdrawn)?,
            EventName::CapabilityIssued => Event::CapabilityIssued(r(name, detail)?),
            EventName::CapabilityRedeemed => Event::CapabilityRedeemed(r(name, detail)?),
            EventName::KeyRegistered => Event::KeyRegistered(r(name, detail)?),
            EventName::KeyRotated => Event::KeyRotated(r(name, detail)?),
            EventName::ConsoleSignedIn => Event::ConsoleSignedIn(r(name, detail)?),
            EventName::ConsoleSignedOut => Event::ConsoleSignedOut(r(name, detail)?),
            EventName::PasskeyEnrolmentIssued => Event::PasskeyEnrolmentIssued(r(name, detail)?),
            EventName::PasskeyEnrolled => Event::PasskeyEnrolled(r(name, detail)?),
            EventName::PasskeyRemoved => Event::PasskeyRemoved(r(name, detail)?),
            EventName::AuditArchived => Event::AuditArchived(r(name, detail)?),
            EventName::ClientGroupsSet => Event::ClientGroupsSet(r(name, detail)?),
            EventName::ApprovalForbidden => Event::ApprovalForbidden(r(name, detail)?),
            EventName::ApprovalReviewed => r::<Nothing>(name, detail).map(|_| Event::ApprovalReviewed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names on disk, as chains written before the enum carry them: none may change.
    #[test]
    fn the_stored_names_are_the_ones_old_chains_carry() {
        let on_disk = [
            "token.issued",
            "token.revoked",
            "client.tokens_revoked",
            "client.created",
            "client.secret_rotated",
            "client.disabled",
            "approval.requested",
            "approval.bypassed",
            "approval.decided",
            "approval.approved",
            "approval.denied",
            "approval.expired",
            "approval.withdrawn",
            "capability.issued",
            "capability.redeemed",
            "key.registered",
            "key.rotated",
            "console.signed_in",
            "console.signed_out",
            "passkey.enrolment_issued",
            "passkey.enrolled",
            "passkey.removed",
            "audit.archived",
            "client.groups_set",
            "approval.forbidden",
            "approval.reviewed",
        ];
        let names: Vec<&str> = EventName::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, on_disk);
        for n in on_disk {
            assert_eq!(EventName::parse(n).map(EventName::as_str), Some(n));
        }
        assert_eq!(EventName::parse("token.minted"), None);
    }

    /// Every event's details, written and read back, are the same event: the shape that
    /// writes a record is the shape that reads it.
    #[test]
    fn every_event_reads_back_what_it_wrote() {
        use crate::domain::{DecisionMethod, Verdict};
        let s = |x: &str| x.to_owned();
        let decided = Decided {
            decision: Verdict::Approve,
            note: None,
            method: DecisionMethod::Passkey,
            params_digest: Some(s("sha256:x")),
            nonce: Some(s("n")),
            credential_id: Some(s("c")),
            authenticator_data: Some(s("a")),
            client_data: Some(s("d")),
            signature: Some(s("s")),
            break_glass: true,
        };
        let events = [
            Event::TokenIssued(serde_json::json!({"grant": "client_credentials", "exp": 1})),
            Event::TokenRevoked(Revoked { client_id: s("c"), not_after: None }),
            Event::ClientTokensRevoked(Revoked { client_id: s("c"), not_after: Some(5) }),
            Event::ClientCreated(Box::new(ClientCreated {
                kind: s("agent"),
                name: s("n"),
                workspace: Some(s("ws-1")),
                scope: s("a b"),
                allow_bypass: vec![s("secret_write")],
                delegates: vec![],
                require_dpop: true,
                federated: vec![Identity { issuer: s("i"), subject: s("s") }],
                key: Some(KeyNamed { kid: s("k"), alg: s("EdDSA") }),
                groups: vec![s("security")],
                owner: Some(s("a@example.com")),
            })),
            Event::ClientSecretRotated(SecretRotated { previous_expires_at: Some(9) }),
            Event::ClientDisabled(ClientDisabled {
                tokens_revoked: true,
                stale_after_days: Some(30),
                last_used_at: Some(60),
            }),
            Event::ApprovalRequested(Box::new(Requested {
                action: s("a"),
                resource: s("r"),
                params: serde_json::json!({"k": [1, "v"]}),
                params_digest: s("sha256:x"),
                reason: s("why"),
                actors: vec![s("x")],
                cnf_jkt: None,
            })),
            Event::ApprovalBypassed(Bypassed { bypass_reason: s("b"), action: s("a"), resource: s("r") }),
            Event::ApprovalDecided(Box::new(decided)),
            Event::ApprovalApproved(Approved { approvals: 2 }),
            Event::ApprovalDenied,
            Event::ApprovalExpired(Expired { expired: s("request") }),
            Event::ApprovalWithdrawn,
            Event::CapabilityIssued(CapabilityIssued {
                jti: s("j"),
                exp: Some(9),
                requester: None,
                bypass: Some(true),
            }),
            Event::CapabilityRedeemed(Redeemed {
                jti: s("j"),
                action: s("a"),
                resource: s("r"),
                params_digest: s("sha256:x"),
                actors: vec![],
            }),
            Event::KeyRegistered(KeyRegistered { alg: s("EdDSA"), activates_at: 1 }),
            Event::KeyRotated(KeyRotated { activates_at: 1, retired: vec![s("old")], unpublish_at: 2 }),
            Event::ConsoleSignedIn(SignedIn { session: s("0123456789abcdef"), expires_at: 3, method: s("secret") }),
            Event::ConsoleSignedOut(SignedOut { session: s("0123456789abcdef") }),
            Event::PasskeyEnrolmentIssued(EnrolmentIssued { expires_at: 4 }),
            Event::PasskeyEnrolled(Enrolled { credential_id: s("c"), alg: -8, public_key: s("p"), name: s("n") }),
            Event::PasskeyRemoved(Removed { credential_id: None, all: Some(true), removed: Some(2) }),
            Event::AuditArchived(Archived { records: 10, last_seq: 10, hash: s("h") }),
            Event::ClientGroupsSet(GroupsSet { before: vec![], groups: vec![s("platform"), s("security")] }),
            Event::ApprovalForbidden(Box::new(Forbidden {
                action: s("org_token_mint"),
                resource: s("orgs/o"),
                params_digest: s("sha256:x"),
                policies: vec![s("office-hours")],
            })),
            Event::ApprovalReviewed,
        ];
        let names: Vec<EventName> = events.iter().map(Event::name).collect();
        assert_eq!(names, EventName::ALL, "one sample of each event, in order");
        for e in events {
            let text = crate::token::jcs::canonicalize(&e.detail());
            assert_eq!(Event::read(e.name().as_str(), &text).as_ref(), Ok(&e), "{}", e.name());
        }
        // Records written before rotations had a grace, or disabling a reason, read as such.
        assert_eq!(
            Event::read("client.secret_rotated", "{}"),
            Ok(Event::ClientSecretRotated(SecretRotated::default()))
        );
        assert_eq!(
            Event::read("client.disabled", r#"{"tokens_revoked":true}"#),
            Ok(Event::ClientDisabled(ClientDisabled {
                tokens_revoked: true,
                stale_after_days: None,
                last_used_at: None
            }))
        );
        // A member the shape does not have, or one missing, is refused, naming the event.
        let e = Event::read("approval.expired", r#"{"expired":"request","extra":1}"#).unwrap_err();
        assert!(e.starts_with("approval.expired"), "{e}");
        assert!(Event::read("key.rotated", r#"{"activates_at":1}"#).is_err());
        assert!(Event::read("token.minted", "{}").is_err());
    }
}
