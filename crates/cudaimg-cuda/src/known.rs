//! Every tag NVIDIA has published for `nvidia/cuda` (`data/nvidia-cuda-tags.txt`, with its
//! source), and the nearest of a list of tags to a mistyped one: the "did you mean" of
//! `pull`, offline for a tag the grammar refuses and from the registry's own list for one
//! it does not have.

use crate::CudaTag;

/// The published list, as of [`crate::eol::AS_OF`]; `#` lines say where it comes from.
const PUBLISHED: &str = include_str!("../data/nvidia-cuda-tags.txt");

/// The tags NVIDIA has published (some since deleted: end-of-life tags go about six months
/// after their end of life).
pub fn published() -> impl Iterator<Item = &'static str> {
    PUBLISHED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Edit distance (insertions, deletions, substitutions) between two ASCII-ish strings.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Up to `n` tags of `candidates` nearest to `tag` by edit distance, within a quarter of
/// its length (at least 3): closest first, then the newest CUDA version. Empty when none
/// is near: a tag that is nothing like any other gets no guess.
pub fn nearest<'a, I>(tag: &str, candidates: I, n: usize) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (tag.chars().count() / 4).max(3);
    let mut scored: Vec<(usize, Option<crate::CudaVersion>, &'a str)> = candidates
        .into_iter()
        .filter(|c| *c != tag)
        .filter_map(|c| {
            let d = distance(tag, c);
            (d <= limit).then(|| (d, CudaTag::parse(c).ok().map(|t| t.version), c))
        })
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
    scored.dedup_by(|a, b| a.2 == b.2);
    scored.into_iter().take(n).map(|(_, _, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("ubuntu22.4", "ubuntu22.04"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_missing_patch_is_one_of_the_patch_releases_newest_first() {
        assert_eq!(
            nearest("12.4-runtime-ubuntu22.04", published(), 2),
            ["12.4.1-runtime-ubuntu22.04", "12.4.0-runtime-ubuntu22.04"]
        );
        assert_eq!(
            nearest("12.4.1-runtime-ubuntu22.4", published(), 1),
            ["12.4.1-runtime-ubuntu22.04"]
        );
        assert!(nearest("latest", published(), 3).is_empty());
        assert!(published().count() > 2000);
    }
}
