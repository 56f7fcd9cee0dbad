//! The one place that turns values into SQL text. Every string that reaches a query (service
//! names, operation names, attribute keys and values, cluster names) goes through [`quote`];
//! database names must pass [`identifier`]; ids are written as hex through [`unhex`].

use std::fmt::Write as _;

/// A ClickHouse string literal holding exactly `s`: quotes and backslashes escaped, control
/// characters written as escapes, so no input can end the literal early.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A database name Skein accepts: letters, digits and `_`, not starting with a digit, at most
/// 64 bytes. Such a name needs no quoting anywhere in ClickHouse's SQL.
pub fn identifier(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "{name:?} is not a usable ClickHouse database name: use letters, digits and '_', not starting with a digit"
        ))
    }
}

/// `unhex('…')`: bytes (ids) as a literal of a `FixedString`/`String` column.
pub fn unhex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + 9);
    out.push_str("unhex('");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str("')");
    out
}

/// `(a, b, c)` of already-quoted items, for `IN`.
pub fn tuple(items: impl IntoIterator<Item = String>) -> String {
    let mut out = String::from("(");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item);
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_everything_that_could_end_a_literal() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), r"'it\'s'");
        assert_eq!(quote(r"back\slash"), r"'back\\slash'");
        assert_eq!(quote(r"\'"), r"'\\\''");
        assert_eq!(quote("a\nb\tc\rd\0e\u{1}"), r"'a\nb\tc\rd\0e\x01'");
        assert_eq!(quote("'); DROP TABLE skein.spans; --"), r"'\'); DROP TABLE skein.spans; --'");
        assert_eq!(quote("ünï ☃"), "'ünï ☃'");
    }

    #[test]
    fn quoted_literals_never_contain_an_unescaped_quote() {
        for s in ["'", "\\'", "\\", "'\\'", "x'y'z", "\\\\'"] {
            let q = quote(s);
            let inner = &q[1..q.len() - 1];
            let mut escaped = false;
            for c in inner.chars() {
                assert!(escaped || c != '\'', "{s:?} quoted as {q} ends early");
                escaped = !escaped && c == '\\';
            }
            assert!(!escaped, "{q} ends with a lone backslash");
        }
    }

    #[test]
    fn identifiers_are_checked() {
        assert_eq!(identifier("skein"), Ok("skein"));
        assert_eq!(identifier("skein_2"), Ok("skein_2"));
        for bad in ["", "2x", "a-b", "a.b", "a b", "a`b", "x;DROP"] {
            assert!(identifier(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unhex_and_tuple() {
        assert_eq!(unhex(&[0, 0xab]), "unhex('00ab')");
        assert_eq!(tuple(["'a'".to_owned(), "'b'".to_owned()]), "('a', 'b')");
    }
}
