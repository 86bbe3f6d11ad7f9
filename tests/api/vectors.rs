//! Shared test vectors: committed tokens with expected verdicts, checked for drift.
