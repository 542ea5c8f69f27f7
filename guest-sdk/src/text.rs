//! [`Str`]: a string that shares its bytes with the batch it was read from.

use arrow_buffer::Buffer;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// An immutable string that shares its bytes: cloning it or cutting a piece of it
/// (a word of a line, a field of a record) copies no more than a short string, as
/// `&str` would, but it owns what it points to, so it can be a row like `String`.
///
/// A string of up to [`Str::INLINE`] bytes is held in the `Str` itself (no allocation, no
/// pointer to follow when hashing or comparing it); a longer one is a slice of a shared
/// buffer. The rows of [`Context::lines`](crate::Context::lines) are slices of the batch
/// the host read, and a `Str` field of a row type read from a CSV, JSON or Parquet
/// column is cut from that column: splitting lines into words or grouping by a text
/// column allocates nothing per row. A long `Str` kept (as a key of a hash table) keeps
/// its buffer alive; operators count that memory as theirs and spill or flush past
/// their budget as for any other.
///
/// ```
/// use flint::Str;
/// let line = Str::from("to be or not to be");
/// let words: Vec<Str> = line.split_ascii_whitespace().collect();
/// assert_eq!(words.len(), 6);
/// assert_eq!(&*words[1], "be");
/// assert_eq!(line.slice_ref(&line[3..5]), "be");
/// ```
#[derive(Clone)]
pub struct Str(Repr);

/// The tag alone in the first word, the payload aligned after it: moving a `Str` then
/// takes whole aligned words. (With the default layout the inline bytes started at an
/// odd offset, and WebAssembly code moved them in overlapping pieces whose stores and
/// loads did not forward: a third of decoding a text column went there.)
#[derive(Clone)]
#[repr(C, u8)]
enum Repr {
    Inline { len: u8, bytes: [u8; Str::INLINE] },
    Shared(Buffer),
}

impl Str {
    /// The longest string kept inline (24 bytes a `Str` on wasm32, tag included).
    pub const INLINE: usize = 19;

    /// The string's bytes.
    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Shared(b) => b.as_slice(),
        }
    }

    /// `len` bytes of `buf` from `at`: inline when short, else a shared slice.
    ///
    /// # Safety
    /// Those bytes are valid UTF-8.
    #[inline]
    pub(crate) unsafe fn from_utf8_buffer_unchecked(buf: &Buffer, at: usize, len: usize) -> Str {
        if len <= Str::INLINE {
            Str::inline(&buf.as_slice()[at..at + len])
        } else {
            Str(Repr::Shared(buf.slice_with_length(at, len)))
        }
    }

    /// A short string held inline; `b.len() <= INLINE` and UTF-8. The bytes past `len`
    /// stay zero, so that two inline strings are equal exactly when their arrays are.
    #[inline]
    fn inline(b: &[u8]) -> Str {
        let mut bytes = [0u8; Str::INLINE];
        let n = b.len();
        // Fixed-size moves (a word from each end, overlapping) rather than a copy of
        // variable length: in WebAssembly that is a `memory.copy`, a call into the
        // runtime, which costs more than the few bytes it moves.
        if n >= 8 {
            bytes[..8].copy_from_slice(&b[..8]);
            if n > 16 {
                bytes[8..16].copy_from_slice(&b[8..16]);
            }
            bytes[n - 8..n].copy_from_slice(&b[n - 8..]);
        } else if n >= 4 {
            bytes[..4].copy_from_slice(&b[..4]);
            bytes[n - 4..n].copy_from_slice(&b[n - 4..]);
        } else {
            if n > 0 {
                bytes[0] = b[0];
            }
            if n > 1 {
                bytes[1] = b[1];
            }
            if n > 2 {
                bytes[2] = b[2];
            }
        }
        Str(Repr::Inline {
            len: n as u8,
            bytes,
        })
    }

    /// An inline string's array as three words (the last overlapping the second).
    #[inline]
    fn words(bytes: &[u8; Str::INLINE]) -> [u64; 3] {
        let w = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        [w(0), w(8), w(Str::INLINE - 8)]
    }

    /// The piece `len` bytes from `at` of this string (UTF-8 boundaries).
    #[inline]
    fn piece(&self, at: usize, len: usize) -> Str {
        match &self.0 {
            Repr::Inline { bytes, .. } => Str::inline(&bytes[at..at + len]),
            // SAFETY: a piece of a `Str` at char boundaries is UTF-8.
            Repr::Shared(b) => unsafe { Str::from_utf8_buffer_unchecked(b, at, len) },
        }
    }

    /// The part of this string that `sub` is, sharing its bytes: `sub` must be a slice
    /// of `self` (such as what `str::split` or `str::trim` return of it).
    ///
    /// # Panics
    /// When `sub` is not inside `self`.
    pub fn slice_ref(&self, sub: &str) -> Str {
        let base = self.bytes().as_ptr() as usize;
        let at = (sub.as_ptr() as usize).wrapping_sub(base);
        assert!(
            at <= self.len() && sub.len() <= self.len() - at,
            "Str::slice_ref: the slice is not part of this string"
        );
        self.piece(at, sub.len())
    }

    /// The words of this string, split by ASCII whitespace as
    /// [`str::split_ascii_whitespace`] does, each sharing its bytes.
    pub fn split_ascii_whitespace(&self) -> SplitAsciiWhitespace {
        SplitAsciiWhitespace {
            s: self.clone(),
            at: 0,
        }
    }

    /// The pieces between occurrences of `sep`, as [`str::split`] with a `char` gives
    /// them, each sharing its bytes.
    pub fn split(&self, sep: char) -> Split {
        Split {
            s: self.clone(),
            at: Some(0),
            sep,
        }
    }

    /// This string without leading and trailing whitespace, sharing its bytes.
    pub fn trim(&self) -> Str {
        self.slice_ref(self.as_str().trim())
    }

    /// The string as a `&str`.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: a `Str` only ever holds UTF-8: made from a `String` or `&str`, from an
        // Arrow UTF-8 array (validated when it was decoded), or cut from one of those at
        // `char` boundaries.
        unsafe { std::str::from_utf8_unchecked(self.bytes()) }
    }
}

/// The iterator of [`Str::split_ascii_whitespace`].
pub struct SplitAsciiWhitespace {
    s: Str,
    at: usize,
}

impl Iterator for SplitAsciiWhitespace {
    type Item = Str;

    #[inline]
    fn next(&mut self) -> Option<Str> {
        let b = self.s.bytes();
        let mut i = self.at;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            self.at = i;
            return None;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        self.at = i;
        // Cut at ASCII bytes: both ends are char boundaries.
        Some(self.s.piece(start, i - start))
    }
}

/// The iterator of [`Str::split`].
pub struct Split {
    s: Str,
    at: Option<usize>,
    sep: char,
}

impl Iterator for Split {
    type Item = Str;

    fn next(&mut self) -> Option<Str> {
        let start = self.at?;
        let rest = &self.s.as_str()[start..];
        let (len, next) = match rest.find(self.sep) {
            Some(i) => (i, Some(start + i + self.sep.len_utf8())),
            None => (rest.len(), None),
        };
        self.at = next;
        Some(self.s.piece(start, len))
    }
}

impl Deref for Str {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Default for Str {
    fn default() -> Self {
        Str::inline(&[])
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        if s.len() <= Str::INLINE {
            Str::inline(s.as_bytes())
        } else {
            Str(Repr::Shared(Buffer::from_vec(s.into_bytes())))
        }
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        if s.len() <= Str::INLINE {
            Str::inline(s.as_bytes())
        } else {
            Str(Repr::Shared(Buffer::from_vec(s.as_bytes().to_vec())))
        }
    }
}

impl From<Str> for String {
    fn from(s: Str) -> String {
        s.as_str().to_owned()
    }
}

impl PartialEq for Str {
    #[inline]
    fn eq(&self, o: &Str) -> bool {
        match (&self.0, &o.0) {
            // A string's length decides its form, so equal strings have the same one.
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                a == b && Str::words(x) == Str::words(y)
            }
            (Repr::Shared(x), Repr::Shared(y)) => x.as_slice() == y.as_slice(),
            _ => false,
        }
    }
}
impl Eq for Str {}

impl PartialEq<str> for Str {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}
impl PartialEq<&str> for Str {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}
impl PartialEq<String> for Str {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, o: &Str) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Str {
    fn cmp(&self, o: &Str) -> std::cmp::Ordering {
        self.as_str().cmp(o.as_str())
    }
}

/// Hashes a short string as three words, a long one as its bytes (a string's length
/// decides its form, so this agrees with `Eq`).
impl Hash for Str {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let [a, b, c] = Str::words(bytes);
                h.write_u64(a ^ ((*len as u64) << 56));
                h.write_u64(b);
                h.write_u64(c);
            }
            Repr::Shared(b) => b.as_slice().hash(h),
        }
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl crate::ToText for Str {
    fn write_text(&self, out: &mut String) {
        out.push_str(self.as_str())
    }
}

/// Serializes as a string.
impl Serialize for Str {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

thread_local! {
    /// The Arrow buffers a columnar decode is reading strings from, so that a `Str`
    /// deserialized from one of them shares it instead of copying (see [`sharing`]).
    static SHARED: RefCell<Vec<Buffer>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `buffers` offered to `Str`'s `Deserialize`: a string borrowed from one
/// of them becomes a slice of it.
pub(crate) fn sharing<R>(buffers: Vec<Buffer>, f: impl FnOnce() -> R) -> R {
    struct Reset(Vec<Buffer>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = std::mem::take(&mut self.0);
            SHARED.with(|s| *s.borrow_mut() = old);
        }
    }
    let old = SHARED.with(|s| std::mem::replace(&mut *s.borrow_mut(), buffers));
    let _reset = Reset(old);
    f()
}

/// The `Str` for `s`: a slice of an offered buffer that holds it, else a copy.
fn shared_or_copied(s: &str) -> Str {
    if s.len() <= Str::INLINE {
        return Str::inline(s.as_bytes());
    }
    let p = s.as_ptr() as usize;
    SHARED.with(|b| {
        for buf in b.borrow().iter() {
            let base = buf.as_ptr() as usize;
            if p >= base && p + s.len() <= base + buf.len() {
                // SAFETY: `s` is a `&str`, so these bytes are UTF-8.
                return unsafe { Str::from_utf8_buffer_unchecked(buf, p - base, s.len()) };
            }
        }
        Str::from(s)
    })
}

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str, E> {
                Ok(shared_or_copied(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str, E> {
                Ok(Str::from(s))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str, E> {
                Ok(Str::from(s))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_str_split_ascii_whitespace() {
        let text = "  to be\tor\n not  to be ";
        let line = Str::from(text);
        let words: Vec<Str> = line.split_ascii_whitespace().collect();
        let want: Vec<&str> = text.split_ascii_whitespace().collect();
        assert_eq!(words.iter().map(|w| w.as_str()).collect::<Vec<_>>(), want);
        assert_eq!(Str::from("").split_ascii_whitespace().count(), 0);
        assert_eq!(Str::from("   ").split_ascii_whitespace().count(), 0);
    }

    #[test]
    fn split_matches_str_split() {
        for (text, sep) in [
            ("a,b,,c", ','),
            (",", ','),
            ("", ','),
            ("äöü", 'ö'),
            ("abc", 'x'),
        ] {
            let got: Vec<String> = Str::from(text).split(sep).map(String::from).collect();
            let want: Vec<String> = text.split(sep).map(String::from).collect();
            assert_eq!(got, want, "{text:?} by {sep:?}");
        }
    }

    #[test]
    fn round_trips_through_postcard_and_compares_as_str() {
        let s = Str::from("grüße");
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(bytes, postcard::to_stdvec("grüße").unwrap());
        let back: Str = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(crate::hash::hash_of(&back), crate::hash::hash_of(&s));
        let (a, b) = (Str::from("a"), Str::from("b"));
        assert!(a < b);
        assert_eq!(Str::from("x").trim(), "x");
        assert_eq!(Str::from("  x ").trim(), "x");
    }

    #[test]
    #[should_panic(expected = "not part of this string")]
    fn slice_ref_refuses_a_foreign_slice() {
        let a = Str::from("hello");
        let _ = a.slice_ref("other");
    }

    #[test]
    fn offered_buffers_are_shared_not_copied() {
        let buf = Buffer::from_vec(b"north south-south-west-by-south".to_vec());
        let text = std::str::from_utf8(buf.as_slice()).unwrap();
        let inside = &text[6..];
        assert!(inside.len() > Str::INLINE);
        let s = sharing(vec![buf.clone()], || shared_or_copied(inside));
        assert_eq!(s, "south-south-west-by-south");
        assert_eq!(s.as_ptr(), inside.as_ptr());
        // Outside `sharing` the same string is copied.
        let c = shared_or_copied(inside);
        assert_ne!(c.as_ptr(), inside.as_ptr());
        // A short one is held inline either way.
        let short = sharing(vec![buf.clone()], || shared_or_copied(&text[..5]));
        assert_eq!(short, "north");
        assert_ne!(short.as_ptr(), text.as_ptr());
    }

    #[test]
    fn inline_strings_of_every_length_copy_compare_and_hash_as_their_text() {
        let text = "abcdefghijklmnopqrstuvwxyz";
        for n in 0..=Str::INLINE {
            let s = Str::from(&text[..n]);
            assert!(matches!(s.0, Repr::Inline { .. }));
            assert_eq!(s.as_str(), &text[..n], "{n}");
            let Repr::Inline { bytes, .. } = &s.0 else {
                unreachable!()
            };
            assert!(bytes[n..].iter().all(|b| *b == 0), "padding of {n}");
            for m in 0..=Str::INLINE {
                let t = Str::from(&text[1..m + 1]);
                assert_eq!(s == t, n == m && text[..n] == text[1..m + 1]);
                let u = Str::from(&text[..m]);
                assert_eq!(s == u, n == m);
                assert_eq!(
                    crate::hash::hash_of(&s) == crate::hash::hash_of(&u),
                    n == m,
                    "{n} vs {m}"
                );
            }
        }
    }

    #[test]
    fn short_pieces_are_inline_and_long_ones_share() {
        let long = "a-rather-long-line-of-text with words";
        let line = Str::from(long.to_string());
        assert!(matches!(line.0, Repr::Shared(_)));
        let words: Vec<Str> = line.split_ascii_whitespace().collect();
        assert!(matches!(words[0].0, Repr::Shared(_)), "27 bytes: shared");
        assert!(matches!(words[1].0, Repr::Inline { .. }));
        assert_eq!(words[0].as_ptr(), line.as_ptr());
        assert_eq!(words, ["a-rather-long-line-of-text", "with", "words"]);
        let exact = "x".repeat(Str::INLINE);
        assert!(matches!(Str::from(exact.as_str()).0, Repr::Inline { .. }));
        assert_eq!(Str::from(exact.as_str()), exact);
    }
}
