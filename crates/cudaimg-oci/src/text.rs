//! Echoing untrusted text in messages: image references, tags, header values and
//! configuration values come from users, files and registries, and an error that repeats one
//! must not hand its control characters to the terminal (a `\x1b[2J` that clears the screen,
//! a `\r` or `\n` that forges a line of cudaimg's own output).

use std::fmt;

/// `s` as it is safe to print: control characters and other characters Rust does not
/// consider printable (bidi overrides, zero-width marks) are written as `char::escape_debug`
/// writes them (`\u{1b}`, `\n`); everything else, Unicode included, as it is.
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

/// See [`shown`].
pub struct Shown<'a>(&'a str);

fn needs_escape(c: char) -> bool {
    // `escape_debug` also escapes quotes and backslashes, which print fine.
    c.is_control() || (!matches!(c, '\\' | '\'' | '"') && c.escape_debug().len() > 1)
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

/// A whole message for the terminal: each line made safe with [`shown`], the line breaks
/// the message was built with kept.
pub fn shown_lines(s: &str) -> String {
    s.split('\n')
        .map(|line| shown(line).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `s` holds a character that [`shown`] would escape.
pub fn has_unsafe(s: &str) -> bool {
    s.chars().any(needs_escape)
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(shown("a\x1b[2Jb").to_string(), "a\\u{1b}[2Jb");
        assert_eq!(shown("x\ny\rz\t").to_string(), "x\\ny\\rz\\t");
        assert_eq!(shown("\u{202e}evil").to_string(), "\\u{202e}evil");
        assert_eq!(
            shown("nvidia/cuda:タグ \"q\" \\").to_string(),
            "nvidia/cuda:タグ \"q\" \\"
        );
        assert_eq!(shown_lines("one\x07\ntwo"), "one\\u{7}\ntwo");
        assert!(has_unsafe("a\u{0}") && !has_unsafe("ü"));
    }
}
