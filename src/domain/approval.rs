//! An approval as the broker keeps it: its status, its operators' decisions, and the request
//! with everything the operators were shown.

use super::{CallerKind, DecisionMethod, GroupName, Verdict};

/// One quorum requirement (design §19): `count` approvals from operators of `group`, or from
/// any operator the rules let decide when no group is named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The group whose members count, if one is named.
    #[serde(default)]
    pub group: Option<GroupName>,
    /// How many of them.
    pub count: u32,
}

impl Requirement {
    /// Whether an operator of `groups` may fill this requirement.
    pub fn admits(&self, groups: &[GroupName]) -> bool {
        self.group.as_ref().is_none_or(|g| groups.contains(g))
    }
}

/// How far each requirement has got: each approving operator fills at most one place, in the
/// assignment that fills the most (an operator in two required groups counts once). Returns
/// the places filled per requirement, in order.
pub fn quorum_progress(requirements: &[Requirement], approvers: &[&[GroupName]]) -> Vec<u32> {
    // One slot per place; Kuhn's augmenting paths assign approvers to slots. At most 16 slots.
    let slots: Vec<usize> =
        requirements.iter().enumerate().flat_map(|(i, r)| std::iter::repeat_n(i, r.count as usize)).collect();
    let mut owner: Vec<Option<usize>> = vec![None; slots.len()];
    fn augment(
        a: usize,
        approvers: &[&[GroupName]],
        reqs: &[Requirement],
        slots: &[usize],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for s in 0..slots.len() {
            if seen[s] || !reqs[slots[s]].admits(approvers[a]) {
                continue;
            }
            seen[s] = true;
            let free = match owner[s] {
                None => true,
                Some(b) => augment(b, approvers, reqs, slots, owner, seen),
            };
            if free {
                owner[s] = Some(a);
                return true;
            }
        }
        false
    }
    for a in 0..approvers.len() {
        let mut seen = vec![false; slots.len()];
        augment(a, approvers, requirements, &slots, &mut owner, &mut seen);
    }
    let mut filled = vec![0u32; requirements.len()];
    for (s, o) in owner.iter().enumerate() {
        if o.is_some() {
            filled[slots[s]] += 1;
        }
    }
    filled
}

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
    /// The groups the operator belonged to when deciding: what its approval counts for.
    pub groups: Vec<GroupName>,
    /// A break-glass approval: the operator approved alone (design §19).
    pub break_glass: bool,
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
    /// Approvals needed, in all.
    pub quorum: i64,
    /// The requirements that must all be met (design §19), as they stood when the request was
    /// made; their counts add up to `quorum`.
    pub requirements: Vec<Requirement>,
    /// The requester's owner when the request was made: never counts towards it.
    pub requester_owner: Option<String>,
    /// Approved by one operator alone, through break-glass.
    pub break_glass: bool,
    /// The operator who acknowledged a break-glass approval, and when.
    pub reviewed: Option<(String, i64)>,
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

    /// Each requirement with the places filled so far, counting every approval recorded.
    pub fn progress(&self) -> Vec<(Requirement, u32)> {
        let approvers: Vec<&[GroupName]> =
            self.decisions.iter().filter(|d| d.decision == Verdict::Approve).map(|d| d.groups.as_slice()).collect();
        let filled = quorum_progress(&self.requirements, &approvers);
        self.requirements.iter().cloned().zip(filled).collect()
    }

    /// The approving operators, in decision order.
    pub fn approvers(&self) -> Vec<String> {
        self.decisions.iter().filter(|d| d.decision == Verdict::Approve).map(|d| d.operator.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(group: Option<&str>, count: u32) -> Requirement {
        Requirement { group: group.map(|g| g.parse().unwrap()), count }
    }

    fn groups(list: &[&str]) -> Vec<GroupName> {
        list.iter().map(|g| g.parse().unwrap()).collect()
    }

    #[test]
    fn an_operator_in_two_required_groups_counts_once() {
        let reqs = [req(Some("security"), 1), req(Some("platform"), 1)];
        let both = groups(&["platform", "security"]);
        assert_eq!(quorum_progress(&reqs, &[&both]), [1, 0]);
        let sec = groups(&["security"]);
        // The one in both moves to platform so the security-only operator can fill security.
        assert_eq!(quorum_progress(&reqs, &[&both, &sec]), [1, 1]);
        assert_eq!(quorum_progress(&reqs, &[&sec, &sec]), [1, 0]);
        let none = groups(&[]);
        assert_eq!(quorum_progress(&reqs, &[&none]), [0, 0]);
        assert_eq!(quorum_progress(&[req(None, 2)], &[&none, &sec]), [2]);
        assert_eq!(quorum_progress(&[req(Some("security"), 2), req(None, 1)], &[&sec, &none, &sec]), [2, 1]);
    }
}
