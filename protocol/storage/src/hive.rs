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

/// Partition columns of a file, from its directories: (column, value; `None` for null).
pub type Partition = Vec<(String, Option<String>)>;

/// Whether a file at `rel` (`/`-separated, below a listed directory) is part of that
/// directory's data as Hadoop and Spark read it: no segment starts with `.` or `_`, and
/// every directory is `column=value`, at most `max_depth` of them. Its partition if so.
pub fn visible(rel: &str, max_depth: usize) -> Option<Partition> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() > max_depth + 1
        || parts
            .iter()
            .any(|p| p.is_empty() || p.starts_with('.') || p.starts_with('_'))
    {
        return None;
    }
    parts[..parts.len() - 1]
        .iter()
        .map(|d| parse(d).map(|(c, v)| (c.to_string(), v)))
        .collect()
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

    #[test]
    fn hidden_files_and_plain_directories_are_not_data() {
        assert_eq!(visible("part-0.csv", 4), Some(vec![]));
        assert_eq!(
            visible("y=2013/c=__HIVE_DEFAULT_PARTITION__/p", 4),
            Some(vec![("y".into(), Some("2013".into())), ("c".into(), None)])
        );
        for hidden in [
            "_SUCCESS",
            ".crc",
            "_temporary/x/p",
            "y=1/.p",
            "plain/p",
            "a//b",
        ] {
            assert_eq!(visible(hidden, 4), None, "{hidden}");
        }
        assert_eq!(visible("a=1/b=2/p", 1), None, "deeper than the bound");
    }
}
