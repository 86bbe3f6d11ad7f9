//! The names of the events the audit log records: one enum, so a record cannot be written
//! under a misspelt name. The names on disk are fixed (old chains verify, exports and
//! witnesses read them); `EventName::as_str` is that name.

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
}

impl EventName {
    /// Every event, in the order above.
    pub const ALL: [EventName; 23] = [
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
        ];
        let names: Vec<&str> = EventName::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, on_disk);
        for n in on_disk {
            assert_eq!(EventName::parse(n).map(EventName::as_str), Some(n));
        }
        assert_eq!(EventName::parse("token.minted"), None);
    }
}
