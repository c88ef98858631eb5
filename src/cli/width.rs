//! Fitting human output to the terminal: how wide stdout is, and tables and long values
//! shortened or wrapped to that width.
//!
//! The width is `COLUMNS` when set (a script or a test can ask for any width), else the
//! terminal's when stdout is one. Piped output with no `COLUMNS` is never cut: a script
//! reading `cudaimg images | awk` gets whole names and digests. `--no-trunc` turns all
//! fitting off, as docker's flag of that name does.
//!
//! Names are shortened from the left (`…4.1-devel-ubuntu22.04`): the end of a tag (its
//! version, flavor and OS) is what tells images apart. Digests in tables are shortened as
//! docker shows image IDs, to 12 hex digits; in reports they stay whole, on a line of
//! their own. Free text (a doctor finding, an environment
//! variable) is wrapped, not cut: every word of a fix must stay readable.

use std::io::IsTerminal as _;

use cudaimg_static::EnvVars;

/// The columns human output must fit into; `None`: no limit.
pub(crate) fn columns(no_trunc: bool) -> Option<usize> {
    if no_trunc {
        return None;
    }
    if let Some(n) = std::env::var(EnvVars::COLUMNS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return Some(n);
    }
    if !std::io::stdout().is_terminal() {
        return None;
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
        .filter(|c| *c > 0)
}

/// The width of `s` in terminal columns (one per character: what this program prints is
/// ASCII but for `…`).
pub(crate) fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` in at most `max` columns, cut from the left with `…` where it is longer.
pub(crate) fn shorten_left(s: &str, max: usize) -> String {
    let n = width(s);
    if n <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// A digest as docker shows an image ID when space is short: its first 12 hex digits.
pub(crate) fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, hex)| hex);
    hex.get(..12).unwrap_or(hex).to_owned()
}

/// `text` broken into lines of at most `max` columns, at spaces (or after commas, for
/// lists such as `NVIDIA_REQUIRE_CUDA`'s); a word longer than a line is split.
pub(crate) fn wrap(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in words(text) {
        let joined = width(&line) + width(word);
        if joined <= max {
            line.push_str(word);
            continue;
        }
        if !line.trim().is_empty() {
            lines.push(line.trim_end().to_owned());
        }
        word.trim_start().clone_into(&mut line);
        while width(&line) > max {
            let head: String = line.chars().take(max).collect();
            line = line.chars().skip(max).collect();
            lines.push(head);
        }
    }
    if !line.trim().is_empty() || lines.is_empty() {
        lines.push(line.trim_end().to_owned());
    }
    lines
}

/// Pieces of `text` that a line may break after: each ends at a space or a comma.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .find(|(i, c)| (*c == ' ' || *c == ',') && *i > 0)
            .map_or(rest.len(), |(i, c)| i + c.len_utf8());
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

/// `first` then `text`, wrapped to `max` columns with continuation lines indented to where
/// the text began (`  env:` lists, doctor findings).
pub(crate) fn hanging(first: &str, text: &str, max: Option<usize>) -> Vec<String> {
    let Some(max) = max else {
        return vec![format!("{first}{text}")];
    };
    let indent = width(first);
    // Less than 20 columns for the text: wrapping would leave a word a line.
    let room = max.saturating_sub(indent).max(20);
    wrap(text, room)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{first}{l}")
            } else {
                format!("{:indent$}{l}", "")
            }
        })
        .collect()
}

/// One line of `label: value` output (`  digest:   sha256:…`) fitted to `max`: as it is when
/// it fits; else the value wrapped beside its label, or, when one of its words (a digest)
/// cannot fit there, on lines of its own under the label, indented. Nothing is cut: a
/// digest stays whole, to be copied.
pub(crate) fn fit_line(line: &str, max: Option<usize>) -> Vec<String> {
    let Some(max) = max else {
        return vec![line.to_owned()];
    };
    if width(line) <= max {
        return vec![line.to_owned()];
    }
    let indent = line.len() - line.trim_start().len();
    let body = &line[indent..];
    // A label is short and ends with `: `; a digest's `sha256:` is no label.
    let (head, rest) = match body.find(": ") {
        Some(i) if i < 24 => (&line[..=indent + i], body[i + 1..].trim_start()),
        _ => (&line[..indent], body),
    };
    // Beside the label, the value keeps the column the label's padding gave it.
    let first = line[..line.len() - rest.len()].to_owned();
    let longest = rest.split(' ').map(width).max().unwrap_or(0);
    if width(&first) + longest <= max {
        return hanging(&first, rest, Some(max));
    }
    let mut out = Vec::new();
    if !head.trim().is_empty() {
        out.push(head.trim_end().to_owned());
    }
    out.extend(hanging(&" ".repeat(indent + 4), rest, Some(max)));
    out
}

/// How a column gives way when the table is too wide.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Never shortened (sizes, counts, short words).
    Keep,
    /// Cut from the left with `…` (names).
    Left,
    /// Digests: docker's short form.
    Digest,
    /// Text wrapped under itself at spaces and commas (a list of platforms, a message);
    /// the last column takes whatever width is left.
    Wrap,
}

/// One column: its header, whether it is right-aligned (numbers), and how it gives way.
#[derive(Clone, Copy)]
pub(crate) struct Column {
    pub header: &'static str,
    pub right: bool,
    pub fit: Fit,
}

impl Column {
    pub(crate) const fn new(header: &'static str, fit: Fit) -> Self {
        Column {
            header,
            right: false,
            fit,
        }
    }
    pub(crate) const fn right(header: &'static str) -> Self {
        Column {
            header,
            right: true,
            fit: Fit::Keep,
        }
    }
}

/// Columns two spaces apart, as docker's tables are.
const GAP: usize = 2;
/// A shortened name keeps at least this many columns: `…4.1-devel-ubuntu22.04`'s tail.
const MIN_NAME: usize = 12;

/// Rows under headers, fitted to a width when there is one.
pub(crate) fn table(columns: &[Column], rows: &[Vec<String>], max: Option<usize>) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = rows.to_vec();
    let natural = |rows: &[Vec<String>], i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| width(c)))
            .chain(std::iter::once(width(columns[i].header)))
            .max()
            .unwrap_or(0)
    };
    let mut widths: Vec<usize> = (0..columns.len()).map(|i| natural(&rows, i)).collect();
    let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
    if let Some(max) = max {
        // Digests first: docker's short form loses the least.
        if total(&widths) > max {
            for (i, c) in columns.iter().enumerate() {
                if c.fit == Fit::Digest {
                    for r in &mut rows {
                        if let Some(cell) = r.get_mut(i) {
                            *cell = short_digest(cell);
                        }
                    }
                    widths[i] = natural(&rows, i);
                }
            }
        }
        // Then lists, to their longest item, one under the other.
        for (i, c) in columns.iter().enumerate() {
            if c.fit == Fit::Wrap && i + 1 < columns.len() && total(&widths) > max {
                let longest = rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .flat_map(|cell| words(cell))
                    .map(|w| width(w.trim()))
                    .max()
                    .unwrap_or(0);
                widths[i] = longest.max(width(c.header)).min(widths[i]);
            }
        }
        // Then names, the widest first, down to what still tells them apart.
        while total(&widths) > max {
            let Some((i, w)) = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| {
                    columns[*i].fit == Fit::Left && **w > MIN_NAME.max(width(columns[*i].header))
                })
                .max_by_key(|(_, w)| **w)
                .map(|(i, w)| (i, *w))
            else {
                break;
            };
            widths[i] = w - (total(&widths) - max).min(w - MIN_NAME.max(width(columns[i].header)));
        }
        // Free text takes what is left, and wraps in it.
        if let Some(last) = columns.len().checked_sub(1) {
            if columns[last].fit == Fit::Wrap && total(&widths) > max {
                let others = total(&widths) - widths[last];
                widths[last] = max.saturating_sub(others).max(20);
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len() + 1);
    let header: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut cells: Vec<Vec<String>> = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            cells.push(match c.fit {
                Fit::Left => vec![shorten_left(cell, widths[i])],
                Fit::Wrap if max.is_some() => wrap(cell, widths[i]),
                _ => vec![cell.to_owned()],
            });
        }
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for line in 0..height {
            let mut text = String::new();
            for (i, c) in columns.iter().enumerate() {
                let cell = cells[i].get(line).map_or("", String::as_str);
                let last = i + 1 == columns.len();
                if i > 0 {
                    text.push_str(&" ".repeat(GAP));
                }
                let pad = widths[i].saturating_sub(width(cell));
                if c.right {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    if !last {
                        text.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push(text.trim_end().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_left_end_and_keep_the_tag() {
        assert_eq!(
            shorten_left("nvidia/cuda:12.4.1-devel-ubuntu22.04", 22),
            "…4.1-devel-ubuntu22.04"
        );
        assert_eq!(shorten_left("short", 22), "short");
    }

    #[test]
    fn a_table_fits_its_width_and_aligns_its_columns() {
        let cols = [
            Column::new("NAME", Fit::Left),
            Column::new("DIGEST", Fit::Digest),
            Column::right("SIZE"),
        ];
        let rows = vec![
            vec![
                "docker.io/nvidia/cuda:12.4.1-devel-ubuntu22.04".to_owned(),
                format!("sha256:{}", "a".repeat(64)),
                "1.2 GiB".to_owned(),
            ],
            vec!["x".to_owned(), "sha256:b".to_owned(), "3 B".to_owned()],
        ];
        let lines = table(&cols, &rows, Some(60));
        assert!(lines.iter().all(|l| width(l) <= 60), "{lines:#?}");
        assert!(lines[1].starts_with('…'), "{lines:#?}");
        let wide = table(&cols, &rows, None);
        assert!(wide[1].contains(&"a".repeat(64)), "{wide:#?}");
    }

    #[test]
    fn wrapping_breaks_at_spaces_and_commas() {
        let lines = wrap("cuda>=12.4 brand=tesla,driver>=470,driver<471", 24);
        assert!(lines.iter().all(|l| width(l) <= 24), "{lines:#?}");
        assert_eq!(
            lines.concat().replace(' ', ""),
            "cuda>=12.4brand=tesla,driver>=470,driver<471"
        );
    }
}
