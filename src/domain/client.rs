//! A registered client as the broker keeps it (its secret is never here).

use super::{Action, CallerKind, ClientId, GroupName, Owner, ScopeSet, TenantId, WorkspaceId};

/// A registered client, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientRecord {
    /// The client id.
    pub client_id: ClientId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its kind, fixed at registration.
    pub kind: CallerKind,
    /// A human name.
    pub name: String,
    /// The bound workspace, if any.
    pub workspace: Option<WorkspaceId>,
    /// The scopes it was registered with.
    pub scopes: ScopeSet,
    /// Gated actions it may take the audited bypass for (install clients only).
    pub allow_bypass: Vec<Action>,
    /// Clients that may exchange this client's tokens and act for it (RFC 8693 delegation).
    pub delegates: Vec<ClientId>,
    /// Whether it gets tokens only with a DPoP proof (`--require-dpop`, design §13).
    pub require_dpop: bool,
    /// The operator groups it belongs to (operators only; design §19), sorted, no repeats.
    pub groups: Vec<GroupName>,
    /// Who is answerable for it, if anyone is named.
    pub owner: Option<Owner>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Registration time, Unix seconds.
    pub created_at: i64,
}

/// What the inventory keeps of a client beside its registration (design §20): read by the
/// command line, the client API and the console, never on the token endpoint's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Who registered it: `cli`, or the id of the install client that did over HTTP.
    pub created_by: String,
    /// When it last got a token, to the minute (written at most once a minute).
    pub last_used_at: Option<i64>,
    /// When its current secret was issued; `None` for a client that has no secret.
    pub secret_created_at: Option<i64>,
    /// The secret a rotation with grace replaced, while it is kept.
    pub previous_secret: Option<PreviousSecret>,
}

/// A replaced secret that keeps working until `expires_at` (`rotate-secret --grace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// When it was issued, if known.
    pub created_at: Option<i64>,
    /// When it stops working (`secret_expires_at`).
    pub expires_at: i64,
    /// How many times it authenticated since the rotation (as far as written).
    pub uses: i64,
}

impl Inventory {
    /// The last use, or the registration if it was never used: what staleness counts from.
    pub fn idle_since(&self, record: &ClientRecord) -> i64 {
        self.last_used_at.unwrap_or(record.created_at)
    }
    /// The previous secret if it still works at `now`.
    pub fn previous_at(&self, now: i64) -> Option<&PreviousSecret> {
        self.previous_secret.as_ref().filter(|p| p.expires_at > now)
    }
}
