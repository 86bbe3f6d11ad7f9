//! An approval as the broker keeps it: its status, its operators' decisions, and the request
//! with everything the operators were shown.

use super::{CallerKind, DecisionMethod, Verdict};

/// An approval's status, as pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for operators.
    Pending,
    /// Approved; the capability may be fetched and redeemed.
    Approved,
    /// Denied by an operator.
    Denied,
    /// Not decided in time, or the capability not redeemed in time.
    Expired,
    /// The capability was redeemed.
    Redeemed,
    /// Withdrawn by the requester.
    Withdrawn,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 6] =
        [Status::Pending, Status::Approved, Status::Denied, Status::Expired, Status::Redeemed, Status::Withdrawn];

    /// The pinned name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Redeemed => "redeemed",
            Status::Withdrawn => "withdrawn",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| "status must be one of pending, approved, denied, expired, redeemed, withdrawn".to_owned())
    }
}

/// One operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The operator's client id.
    pub operator: String,
    /// Approve or deny.
    pub decision: Verdict,
    /// The operator's note.
    pub note: Option<String>,
    /// When, Unix seconds.
    pub at: i64,
    /// How it was made.
    pub method: DecisionMethod,
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// Opaque id.
    pub approval_id: String,
    /// The requester's tenant.
    pub tenant: String,
    /// The gated action.
    pub action: String,
    /// The target resource.
    pub resource: String,
    /// The request-parameters digest.
    pub params_digest: String,
    /// The parameters as presented (design §11), canonical JSON text: what the digest covers
    /// and the operator is shown. `None` on requests made before parameters were kept.
    pub params: Option<String>,
    /// The requester's own description, JSON object text: unverified.
    pub summary: String,
    /// The requester's reason.
    pub reason: String,
    /// The requester's client id.
    pub requester: String,
    /// The requester's kind.
    pub requester_kind: CallerKind,
    /// Current status as stored (see `effective_status`).
    pub status: Status,
    /// Approvals needed.
    pub quorum: i64,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Pending until, Unix seconds.
    pub expires_at: i64,
    /// When it was decided.
    pub decided_at: Option<i64>,
    /// Whether it came from an install bypass.
    pub bypass: bool,
    /// The capability's jti, once approved.
    pub cap_jti: Option<String>,
    /// The capability's iat.
    pub cap_iat: Option<i64>,
    /// The capability's exp.
    pub cap_exp: Option<i64>,
    /// When it was redeemed.
    pub redeemed_at: Option<i64>,
    /// Who redeemed it.
    pub redeemed_by: Option<String>,
    /// The requester token's actor chain (`act`), JSON text, when it was delegated.
    pub act: Option<String>,
    /// The thumbprint of the key the requester's token was bound to (DPoP), if it was.
    pub cnf_jkt: Option<String>,
    /// Decisions so far, oldest first.
    pub decisions: Vec<Decision>,
}

impl ApprovalRow {
    /// The status at `now`: a pending request past its deadline, or an approved one whose
    /// capability has expired unredeemed, is expired whether or not that has been written.
    pub fn effective_status(&self, now: i64) -> Status {
        match self.status {
            Status::Pending if now >= self.expires_at => Status::Expired,
            Status::Approved if self.cap_exp.is_some_and(|e| now >= e) => Status::Expired,
            s => s,
        }
    }

    /// The approving operators, in decision order.
    pub fn approvers(&self) -> Vec<String> {
        self.decisions.iter().filter(|d| d.decision == Verdict::Approve).map(|d| d.operator.clone()).collect()
    }
}
