//! Hive-style partition directories (`year=2013/carrier=UA/`): how a value is written in a
//! directory name and read back.

/// Hive's name for a null partition value.
pub const NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Appends `value` to a directory name, `%XX`-escaping every byte a path, a shell or Hive
/// would read otherwise (as Hive escapes partition values), and a leading `.`.
pub fn escape_into(out: &mut String, value: &str) {
    for (i, b) in value.bytes().enumerate() {
        let plain =
            b.is_ascii_alphanumeric() || b"-_+@ ,~!$&();".contains(&b) || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A directory name's value, unescaped; `None` for Hive's null.
pub fn unescape(value: &str) -> Option<String> {
    if value == NULL {
        return None;
    }
    let b = value.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A directory name `column=value`, split; `None` for any other name.
pub fn parse(name: &str) -> Option<(&str, Option<String>)> {
    let (column, value) = name.split_once('=')?;
    (!column.is_empty()).then(|| (column, unescape(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_directory_names() {
        for v in [
            "UA",
            "2013-01-01 05:00:00",
            "a/b",
            "x=y",
            ".hidden",
            "..",
            "naïve",
            "50%",
            "",
        ] {
            let mut name = String::from("c=");
            escape_into(&mut name, v);
            assert!(
                !name[2..].contains('/') && !name[2..].starts_with('.'),
                "{name}"
            );
            assert_eq!(parse(&name), Some(("c", Some(v.to_string()))), "{name}");
        }
        assert_eq!(parse("c=__HIVE_DEFAULT_PARTITION__"), Some(("c", None)));
        assert_eq!(parse("plain"), None);
        assert_eq!(unescape("%4"), Some("%4".into()));
        assert_eq!(unescape("%zz%"), Some("%zz%".into()));
    }
}
