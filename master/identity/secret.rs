//! Secrets the master hands out (operator tokens, worker secrets) and how it keeps them:
//! 256 random bits, of which only the SHA-256 hash is stored. A slow password hash would
//! add nothing here: these are not passwords a person chose, and nobody can guess 256
//! random bits from their hash.

use herd::auth::{constant_time_eq, hex};
use herd::error::Error;

use crate::records::SecretHash;

/// The SHA-256 hash of a secret.
pub fn digest(secret: &str) -> SecretHash {
    let hash = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// A new secret (256 bits from the kernel, as 64 hex digits) and its hash. Every
/// registration makes one, so it comes from getrandom(2), with no file to open.
pub fn issue() -> Result<(String, SecretHash), Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Unavailable("the kernel gave no random bytes".into()))?;
    let secret = hex(&bytes);
    let hash = digest(&secret);
    Ok((secret, hash))
}

/// Whether `given` is the secret whose hash is `kept` (constant time).
pub fn matches(kept: &SecretHash, given: &str) -> bool {
    !given.is_empty() && constant_time_eq(kept, &digest(given.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_only_their_own_hash_matches() {
        let (a, hash_a) = issue().unwrap();
        let (b, hash_b) = issue().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert!(matches(&hash_a, &a));
        assert!(!matches(&hash_a, &b));
        assert!(!matches(&hash_b, ""));
        // The known SHA-256 of "abc".
        assert_eq!(
            digest("abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256, not something else"
        );
    }
}
