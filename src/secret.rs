//! Comparing a secret someone offers (the admin token, the replication `security_token`) with
//! the configured one. Owns nothing else; it must never log either value.

/// Whether `offered` is `secret`, in time that depends only on their lengths (a comparison
/// that stops at the first differing byte tells a prober how much of a guess was right).
pub fn same(offered: &str, secret: &str) -> bool {
    let (a, b) = (offered.as_bytes(), secret.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, byte) in b.iter().enumerate() {
        diff |= byte ^ a.get(i).copied().unwrap_or(!byte);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_same_text_is_the_same_secret() {
        assert!(super::same("s3cret", "s3cret"));
        assert!(super::same("", ""));
        for offered in ["s3cre", "s3cretx", "S3cret", "", "x"] {
            assert!(!super::same(offered, "s3cret"), "{offered}");
        }
        assert!(!super::same("x", ""));
    }
}
