//! Go's `strconv.Quote`, which BuildKit's AST dump and its history
//! strings (`CMD ["a" "b"]`) use.

use std::fmt::Write as _;

/// Go's `strconv.Quote`.
pub(crate) fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ if is_go_printable(ch) => out.push(ch),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0C' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0B' => out.push_str("\\v"),
            // Writing to a String cannot fail.
            _ if ch < ' ' || ch == '\x7F' => _ = write!(out, "\\x{:02x}", u32::from(ch)),
            _ if u32::from(ch) < 0x10000 => _ = write!(out, "\\u{:04x}", u32::from(ch)),
            _ => _ = write!(out, "\\U{:08x}", u32::from(ch)),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: letters, marks, numbers,
/// punctuation, symbols and the ASCII space.
///
/// We have no Unicode category tables, so this rejects the characters that
/// matter in practice (controls, separators other than the space, format
/// characters, private use, non-characters) and accepts everything else,
/// including unassigned code points that Go would escape.
fn is_go_printable(ch: char) -> bool {
    let code = u32::from(ch);
    if ch.is_ascii() {
        return (0x20..0x7F).contains(&code);
    }
    if ch.is_control() || ch.is_whitespace() {
        return false;
    }
    let format_or_private = matches!(
        code,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xE000..=0xF8FF
            | 0xF0000..=0x10FFFF
            | 0xFDD0..=0xFDEF
    );
    // U+xxFFFE and U+xxFFFF are non-characters in every plane.
    !format_or_private && code & 0xFFFE != 0xFFFE
}
