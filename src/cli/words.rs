//! Counted nouns in what cudaimg prints: "1 layer", "2 layers", never "1 layers".

/// `n` and the noun, plural unless `n` is 1 (`blob` -> `blobs`; nouns ending in `s`,
/// `sh`, `ch` or `x` take `es`).
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else if noun.ends_with('s')
        || noun.ends_with("sh")
        || noun.ends_with("ch")
        || noun.ends_with('x')
    {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

/// `count` for a `usize`.
pub(crate) fn counted(n: usize, noun: &str) -> String {
    count(u64::try_from(n).unwrap_or(u64::MAX), noun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_and_plural() {
        assert_eq!(count(1u64, "layer"), "1 layer");
        assert_eq!(count(0u64, "layer"), "0 layers");
        assert_eq!(counted(2, "match"), "2 matches");
        assert_eq!(counted(1, "partial download"), "1 partial download");
    }
}
