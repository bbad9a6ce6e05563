//! Limits that keep the KDL parser safe on any text (pure).
//!
//! The `kdl` crate (6.x) parses with recursive descent, and a spec file is user
//! input, possibly hostile (a cloned repository). Measured on kdl 6.5, three things
//! grow without bound with the text:
//!
//! - **Stack.** Each nested `{` costs about 7 KiB of stack; a block comment recurses
//!   once per `*` or `/` inside it (about 1 KiB per character when nested, as in
//!   `/*/*/*`), and the error recovery at the top level recurses once per stray
//!   character (`}}}}`, `a=a=a=`: about 0.6 KiB each). 2,000 nested blocks or 100,000
//!   stray `}` overflowed an 8 MiB stack: the process aborted (exit 134).
//! - **Time.** A children block commented out with `/-` inside another such block is
//!   parsed twice per level: 20 levels of `a /-{ a /-{ ...` took minutes.
//! - Our own lowering recurses over children blocks too.
//!
//! So, before and around handing a text to kdl:
//!
//! 1. [`parse_stack_bytes`] computes an upper bound of the stack the parse can use,
//!    from the characters alone (so it holds whatever kdl makes of them: no lexing
//!    can be fooled): [`STACK_PER_BRACE`] per `{`, [`STACK_PER_COMMENT_CHAR`] per `*`
//!    or `/`, [`STACK_PER_BYTE`] per other byte, with about 1.7 to 2 times the
//!    measured costs as margin. A text needing more than [`MAX_PARSE_STACK`] is
//!    refused (E040); otherwise the parse runs on a stack of that size (see
//!    `reader::Ctx::parse_kdl`). A test parses the worst patterns measured on a
//!    stack of exactly the computed size, so a kdl upgrade that needs more fails it.
//! 2. [`slashdash_nesting`] finds the deepest nesting of `/-{ ... }` blocks with a
//!    small lexer (strings, raw strings and comments skipped), refused beyond
//!    [`MAX_SLASHDASH_NESTING`] before kdl sees the text.
//! 3. After parsing, nodes nested deeper than [`MAX_DEPTH`] are refused (E040) before
//!    anything recurses over the document. The parse itself is safe by (1), so this
//!    check is exact and needs no lexer.
//!
//! What it deliberately does not do: guess kdl's error recovery. The lexer of (2)
//! follows KDL v2 for valid text; a crafted invalid text may make it see less
//! nesting than kdl does, which can only cost time (never the stack, bounded by (1)).

/// Deepest nesting of nodes in children blocks (a top-level node is at depth 1).
/// The spec language itself needs 3 (`image` > `layer` > `copy`).
pub const MAX_DEPTH: usize = 32;

/// Deepest nesting of children blocks commented out with `/-` (see the module docs).
pub const MAX_SLASHDASH_NESTING: usize = 8;

/// Stack charged per `{` (measured: about 7 KiB).
pub const STACK_PER_BRACE: usize = 12 << 10;
/// Stack charged per `*` or `/` (measured: at most 0.95 KiB).
pub const STACK_PER_COMMENT_CHAR: usize = 2 << 10;
/// Stack charged per other byte (measured: at most 0.6 KiB).
pub const STACK_PER_BYTE: usize = 1 << 10;
/// Fixed part: frames of the parser's entry points and of our lowering.
pub const STACK_BASE: usize = 256 << 10;
/// The largest stack a parse may be given; texts needing more are refused.
pub const MAX_PARSE_STACK: usize = 1 << 30;

/// An upper bound of the stack that parsing `text` with kdl can use.
pub fn parse_stack_bytes(text: &str) -> usize {
    let mut need = STACK_BASE;
    for b in text.bytes() {
        need = need.saturating_add(match b {
            b'{' => STACK_PER_BRACE,
            b'*' | b'/' => STACK_PER_COMMENT_CHAR,
            _ => STACK_PER_BYTE,
        });
    }
    need
}

/// The deepest nesting of `/-`-commented children blocks in `text`, and the byte
/// offset of the `{` where it is first reached (0 if there is none).
pub fn slashdash_nesting(text: &str) -> (usize, usize) {
    let b = text.as_bytes();
    // One entry per open `{`: was it opened right after a `/-`?
    let mut open: Vec<bool> = Vec::new();
    let (mut depth, mut max, mut at) = (0usize, 0usize, 0usize);
    // A `/-` was seen and nothing but space, newlines and comments since.
    let mut pending = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_quoted(b, i);
                pending = false;
                continue;
            }
            b'#' if raw_hashes(b, i).is_some() => {
                i = skip_raw(b, i);
                pending = false;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'-') => {
                pending = true;
                i += 2;
                continue;
            }
            b'{' => {
                open.push(pending);
                if pending {
                    depth += 1;
                    if depth > max {
                        (max, at) = (depth, i);
                    }
                }
                pending = false;
            }
            b'}' => {
                if open.pop() == Some(true) {
                    depth -= 1;
                }
                pending = false;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\\' => {}
            _ => pending = false,
        }
        i += 1;
    }
    (max, at)
}

/// The end of the quoted string (single- or multi-line) starting at `i`.
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let multi = b[i..].starts_with(b"\"\"\"");
    let mut j = i + if multi { 3 } else { 1 };
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' if !multi => return j + 1,
            b'"' if b[j..].starts_with(b"\"\"\"") => return j + 3,
            _ => j += 1,
        }
    }
    b.len()
}

/// The number of `#` of a raw string starting at `i` (`#"`, `##"`...), if one does.
fn raw_hashes(b: &[u8], i: usize) -> Option<usize> {
    let n = b[i..].iter().take_while(|c| **c == b'#').count();
    (b.get(i + n) == Some(&b'"')).then_some(n)
}

/// The end of the raw string starting at `i`: the first `"` followed by as many
/// `#` as opened it (a multi-line one ends at `"""` followed by them).
fn skip_raw(b: &[u8], i: usize) -> usize {
    let n = raw_hashes(b, i).unwrap_or(0);
    let open = i + n;
    let multi = b[open..].starts_with(b"\"\"\"");
    let mut j = open + if multi { 3 } else { 1 };
    let close: &[u8] = if multi { b"\"\"\"" } else { b"\"" };
    while j < b.len() {
        if b[j..].starts_with(close) {
            let after = j + close.len();
            if b[after..].iter().take(n).filter(|c| **c == b'#').count() == n {
                return after + n;
            }
        }
        j += 1;
    }
    b.len()
}

/// The end of the (nestable) block comment starting at `i`.
fn skip_block_comment(b: &[u8], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        if b[j..].starts_with(b"/*") {
            depth += 1;
            j += 2;
        } else if b[j..].starts_with(b"*/") {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slashdash_nesting_skips_strings_and_comments() {
        assert_eq!(slashdash_nesting("a { b }").0, 0);
        assert_eq!(slashdash_nesting("a /-{ b }").0, 1);
        assert_eq!(slashdash_nesting("a /-{ b /-{ c } }").0, 2);
        assert_eq!(slashdash_nesting("a /- \n { b /-{ c } }").0, 2);
        assert_eq!(slashdash_nesting("a /-{ b } /-{ c }").0, 1);
        assert_eq!(slashdash_nesting("a /-{ b { c /-{ d } } }").0, 2);
        // In strings, raw strings and comments, `/-{` means nothing.
        assert_eq!(slashdash_nesting(r#"a "/-{ /-{" { b }"#).0, 0);
        assert_eq!(slashdash_nesting(r##"a #"/-{ "/-{"# { b }"##).0, 0);
        assert_eq!(slashdash_nesting("a \"\"\"\n/-{ \" /-{\n\"\"\" { b }").0, 0);
        assert_eq!(
            slashdash_nesting("// /-{ /-{\na /* /-{ /* /-{ */ */ { }").0,
            0
        );
        assert_eq!(slashdash_nesting(r#"a "\" /-{" /-{ b }"#).0, 1);
        // A slashdashed node (not its children) does not count.
        assert_eq!(slashdash_nesting("/-a { /-b { c } }").0, 0);
        let (n, at) = slashdash_nesting("x /-{ y /-{ z } }");
        assert_eq!((n, at), (2, 10));
    }

    #[test]
    fn slashdash_nesting_matches_deep_input() {
        let text = format!("a {}{}", "/-{ a ".repeat(12), "}".repeat(12));
        assert_eq!(slashdash_nesting(&text).0, 12);
    }

    /// The worst patterns measured, each parsed on a stack of exactly the size
    /// [`parse_stack_bytes`] computes for it. If a kdl upgrade needs more stack per
    /// character, this test aborts (stack overflow) instead of passing.
    #[test]
    fn the_stack_budget_covers_the_worst_patterns() {
        let n = 4000;
        let patterns = [
            format!("a {}{}", "{ a ".repeat(n), "}".repeat(n)),
            format!("a{}{}", "{a".repeat(n), "}".repeat(n)),
            "){".repeat(n),
            "{".repeat(n),
            "}".repeat(n * 4),
            "a=".repeat(n * 4),
            "=".repeat(n * 4),
            "*/".repeat(n * 4),
            format!("{}{}\na", "/*".repeat(n * 2), "*/".repeat(n * 2)),
            format!("/*{} */\na", " *".repeat(n * 4)),
            format!("a {}{}", "{ a \"\\q ".repeat(n), "}".repeat(n)),
            format!("a {}{}", "{ (t)a (t)\"v\" k=(t)1 ".repeat(n), "}".repeat(n)),
        ];
        for text in patterns {
            let need = parse_stack_bytes(&text);
            let parsed = std::thread::Builder::new()
                .stack_size(need)
                .spawn(move || {
                    let r = kdl::KdlDocument::parse(&text);
                    drop(r);
                })
                .expect("a thread")
                .join();
            assert!(parsed.is_ok());
        }
    }
}
