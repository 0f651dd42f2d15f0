//! BuildKit's `Node.Dump()`: the S-expression form its parser tests compare
//! against, e.g. `(copy ["--from=a"] "foo" "/tmp/")`, one line per
//! instruction. Heredoc bodies, line numbers and the exec-form flag are not
//! part of it.

use crate::goquote::go_quote;

use super::{Dockerfile, Instruction};

/// Dumps the whole file as BuildKit's root node would.
pub fn dump(file: &Dockerfile) -> String {
    let mut out = String::new();
    for instruction in &file.instructions {
        out.push('(');
        out.push_str(&dump_instruction(instruction));
        out.push_str(")\n");
    }
    out.trim().to_owned()
}

fn dump_instruction(instruction: &Instruction) -> String {
    let mut out = instruction.keyword.to_lowercase();
    if !instruction.flags.is_empty() {
        // Go's `%q` of a string slice.
        let flags: Vec<String> = instruction
            .flags
            .iter()
            .map(|flag| go_quote(flag))
            .collect();
        out.push_str(" [");
        out.push_str(&flags.join(" "));
        out.push(']');
    }
    if let Some(trigger) = &instruction.onbuild {
        out.push_str(" (");
        out.push_str(&dump_instruction(trigger));
        out.push(')');
    }
    for arg in &instruction.args {
        out.push(' ');
        out.push_str(&go_quote(arg));
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a b"), r#""a b""#);
        assert_eq!(
            go_quote("\" \\ / \x08 \x0c \n \r \t \0"),
            r#""\" \\ / \b \f \n \r \t \x00""#
        );
        assert_eq!(go_quote("\x07\x0b\x1b\x7f"), r#""\a\v\x1b\x7f""#);
        assert_eq!(go_quote("☥ ☃ 한국어 é"), "\"☥ ☃ 한국어 é\"");
        assert_eq!(
            go_quote("\u{85}\u{a0}\u{200b}\u{feff}"),
            r#""\u0085\u00a0\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{e000}\u{10ffff}"), r#""\ue000\U0010ffff""#);
        assert_eq!(go_quote("😀"), "\"😀\"");
    }
}
