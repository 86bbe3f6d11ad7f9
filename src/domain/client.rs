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
