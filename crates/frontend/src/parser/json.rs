//! The JSON arrays of the exec form: `CMD ["a", "b"]`.
//!
//! BuildKit decodes these with Go's `encoding/json` and tells three outcomes
//! apart, which decide between the exec form, the shell form and an error.
//! We need exactly Go's view of what is valid JSON, so this is a small
//! hand-written reader rather than a general-purpose JSON library:
//!
//! * Go's decoder reads one value and ignores whatever follows it, so
//!   `["a"] trailing` is the array `["a"]`;
//! * a lone UTF-16 surrogate escape decodes to U+FFFD instead of failing;
//! * nesting is limited to 10000 levels, beyond which the input is invalid.
//!
//! It never recurses, so deeply nested input can't overflow the stack.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonError {
    /// The text does not start with `[`.
    NotArray,
    /// Not valid JSON.
    Invalid,
    /// Valid JSON, but an element is not a string.
    NotStrings,
}

/// Go's `encoding/json` nesting limit.
const MAX_DEPTH: usize = 10_000;

/// Reads a JSON array of strings from the start of `text` (after leading
/// whitespace).
pub(super) fn parse_string_array(text: &str) -> Result<Vec<String>, JsonError> {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return Err(JsonError::NotArray);
    }
    let mut reader = Reader {
        bytes: text.as_bytes(),
        pos: 1,
    };

    // Elements that are not strings are only an error once the whole array
    // has turned out to be valid JSON.
    let mut strings = Vec::new();
    let mut all_strings = true;
    reader.skip_whitespace();
    if reader.peek() == Some(b']') {
        return Ok(strings);
    }
    loop {
        reader.skip_whitespace();
        if reader.peek() == Some(b'"') {
            strings.push(reader.string()?);
        } else {
            reader.skip_value(1)?;
            all_strings = false;
        }
        reader.skip_whitespace();
        match reader.bump() {
            Some(b',') => continue,
            Some(b']') => break,
            _ => return Err(JsonError::Invalid),
        }
    }
    if all_strings {
        Ok(strings)
    } else {
        Err(JsonError::NotStrings)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek();
        if byte.is_some() {
            self.pos += 1;
        }
        byte
    }

    fn expect(&mut self, byte: u8) -> Result<(), JsonError> {
        if self.bump() == Some(byte) {
            Ok(())
        } else {
            Err(JsonError::Invalid)
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Skips one value of any kind. `depth` counts the arrays and objects
    /// already open around it.
    fn skip_value(&mut self, depth: usize) -> Result<(), JsonError> {
        // The closing bytes of the containers opened inside this value.
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value.
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                }
                Some(open_byte @ (b'[' | b'{')) => {
                    self.pos += 1;
                    if depth + open.len() + 1 > MAX_DEPTH {
                        return Err(JsonError::Invalid);
                    }
                    let close = if open_byte == b'[' { b']' } else { b'}' };
                    self.skip_whitespace();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        open.push(close);
                        if close == b'}' {
                            self.object_key()?;
                        }
                        continue;
                    }
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(JsonError::Invalid),
            }

            // After a value: close containers until one continues.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                self.skip_whitespace();
                match self.bump() {
                    Some(b',') => {
                        if close == b'}' {
                            self.object_key()?;
                        }
                        break;
                    }
                    Some(byte) if byte == close => {
                        open.pop();
                    }
                    _ => return Err(JsonError::Invalid),
                }
            }
        }
    }

    /// `"key" :` inside an object.
    fn object_key(&mut self) -> Result<(), JsonError> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return Err(JsonError::Invalid);
        }
        self.string()?;
        self.skip_whitespace();
        self.expect(b':')
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(JsonError::Invalid)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.bump() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(JsonError::Invalid),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), JsonError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(JsonError::Invalid);
        }
        self.digits();
        Ok(())
    }

    /// Reads a string, unescaped.
    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.bump() {
                None => return Err(JsonError::Invalid),
                Some(b'"') => break,
                Some(0..=0x1F) => return Err(JsonError::Invalid),
                Some(b'\\') => match self.bump() {
                    Some(b'"') => out.push(b'"'),
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'/') => out.push(b'/'),
                    Some(b'b') => out.push(0x08),
                    Some(b'f') => out.push(0x0C),
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'u') => {
                        let ch = self.unicode_escape()?;
                        let mut buf = [0; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(JsonError::Invalid),
                },
                Some(byte) => out.push(byte),
            }
        }
        // The input is a `str` and we only split it at ASCII bytes, so this
        // is valid UTF-8; lossy conversion just avoids a panic path.
        Ok(String::from_utf8(out)
            .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned()))
    }

    /// The rest of a `\uXXXX` escape (after `\u`), combining a surrogate
    /// pair written as two escapes. Like Go, a surrogate that does not form a
    /// pair becomes U+FFFD and the escape after it is read on its own.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        if !(0xD800..0xE000).contains(&first) {
            return Ok(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        if (0xD800..0xDC00).contains(&first)
            && self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u")
        {
            let saved = self.pos;
            self.pos += 2;
            if let Ok(second) = self.hex4()
                && (0xDC00..0xE000).contains(&second)
            {
                let combined = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok(char::from_u32(combined).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            self.pos = saved;
        }
        Ok(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or(JsonError::Invalid)?;
        let mut value = 0;
        for &digit in digits {
            let nibble = char::from(digit).to_digit(16).ok_or(JsonError::Invalid)?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Result<Vec<String>, JsonError> {
        Ok(items.iter().map(|item| (*item).to_owned()).collect())
    }

    #[test]
    fn arrays_of_strings() {
        assert_eq!(parse_string_array("[]"), strings(&[]));
        assert_eq!(
            parse_string_array(" [ \"a\" ,\t\"b\" ] "),
            strings(&["a", "b"])
        );
        assert_eq!(parse_string_array("[\"a\"] trailing junk"), strings(&["a"]));
        assert_eq!(
            parse_string_array(r#"["\" \\ \/ \b \f \n \r \t \u0000 \u00e9 \ud83d\ude00"]"#),
            strings(&["\" \\ / \u{8} \u{c} \n \r \t \0 é 😀"])
        );
        assert_eq!(
            parse_string_array(r#"["\ud800x", "\udc00"]"#),
            strings(&["\u{FFFD}x", "\u{FFFD}"])
        );
        assert_eq!(
            parse_string_array(r#"["\ud800\u0041"]"#),
            strings(&["\u{FFFD}A"])
        );
    }

    #[test]
    fn invalid_json_is_not_an_error_of_its_own() {
        for text in [
            "['a']",
            "[\"a\"",
            "[\"a]",
            "[\"a\",]",
            "[,]",
            "[\"\\x\"]",
            "[\"a\tb\"]",
            "[01]",
            "[1.]",
            "[{\"a\" 1}]",
            "[tru]",
        ] {
            assert_eq!(parse_string_array(text), Err(JsonError::Invalid), "{text}");
        }
        assert_eq!(parse_string_array("echo ["), Err(JsonError::NotArray));
        assert_eq!(parse_string_array(""), Err(JsonError::NotArray));
    }

    #[test]
    fn valid_json_that_is_not_all_strings() {
        for text in [
            "[ \"echo\", [ \"nested json\" ] ]",
            "[1]",
            "[null]",
            "[\"a\", {\"k\": [1, -2.5e3, true, false, null, {}]}]",
        ] {
            assert_eq!(
                parse_string_array(text),
                Err(JsonError::NotStrings),
                "{text}"
            );
        }
    }

    #[test]
    fn deep_nesting_neither_overflows_nor_passes() {
        let deep = "[".repeat(20_000) + &"]".repeat(20_000);
        assert_eq!(parse_string_array(&deep), Err(JsonError::Invalid));
        let fine = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(parse_string_array(&fine), Err(JsonError::NotStrings));
    }
}
