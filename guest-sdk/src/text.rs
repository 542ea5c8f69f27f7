//! [`Str`]: a string that shares its bytes with the batch it was read from.

use arrow_buffer::Buffer;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
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
#[repr(C)]
pub struct Str {
    head: Head,
    last: NonZeroU64,
}

/// Words of a `Str`: 23 inline bytes and their length, or a `Buffer` (12 bytes on wasm32,
/// 24 on a 64-bit host) and the shared form's mark.
const WORDS: usize = if std::mem::size_of::<Buffer>() <= 16 {
    3
} else {
    4
};

/// The words before the last: the first inline bytes, or the shared form's buffer.
///
/// A `Str` is whole aligned words, and a short one is made in registers and written as
/// words: moving one is a few word moves whose loads follow stores of the same width.
/// (With an enum tag and a byte array, WebAssembly code built the inline bytes with
/// stores of one to eight bytes and moved them with loads of eight that could not be
/// forwarded from those stores: two-thirds of decoding a text column and a third of
/// splitting words stalled there.)
///
/// The last word's top byte tells the form: one more than the length of an inline
/// string (the bytes are then the `Str`'s first ones, zero past the length), or
/// [`SHARED_MARK`] (the first bytes are then a `Buffer`). That byte is never zero, so
/// `Option<Str>` and `Result<Str, E>` need no word of their own.
#[repr(C)]
union Head {
    words: [u64; WORDS - 1],
    shared: ManuallyDrop<Buffer>,
}

/// The mark of the shared form.
const SHARED_MARK: u64 = 0xff;

/// The top byte of a word.
const TOP: u64 = 0xff << 56;

// The inline bytes are read in place as the words' little-endian bytes.
const _: () = assert!(cfg!(target_endian = "little"));
const _: () = assert!(std::mem::size_of::<Str>() == WORDS * 8);

/// Eight bytes of `b` from `at`, as a little-endian word.
#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Str {
    /// The longest string kept inline (a `Str` is 24 bytes on wasm32, its length
    /// included).
    pub const INLINE: usize = 23;

    /// The last word's top byte: one more than an inline string's length, or
    /// [`SHARED_MARK`].
    #[inline(always)]
    fn tag(&self) -> u64 {
        self.last.get() >> 56
    }

    /// The shared form's buffer, `None` for an inline string.
    #[inline(always)]
    fn buffer(&self) -> Option<&Buffer> {
        // SAFETY: the mark says the first bytes are a `Buffer`.
        (self.tag() == SHARED_MARK).then(|| unsafe { &*self.head.shared })
    }

    /// A `Str` sharing `buf` (longer than [`Str::INLINE`] bytes, UTF-8).
    #[inline]
    fn shared(buf: Buffer) -> Str {
        Str {
            head: Head {
                shared: ManuallyDrop::new(buf),
            },
            last: NonZeroU64::new(SHARED_MARK << 56).expect("a mark"),
        }
    }

    /// An inline string's words, all of them (`None` for a shared one).
    #[inline(always)]
    fn inline_words(&self) -> Option<[u64; WORDS]> {
        // SAFETY: an inline string is plain words, no padding.
        (self.tag() != SHARED_MARK)
            .then(|| unsafe { std::ptr::read((self as *const Str).cast::<[u64; WORDS]>()) })
    }

    /// The string's bytes.
    #[inline]
    fn bytes(&self) -> &[u8] {
        let tag = self.tag();
        if tag == SHARED_MARK {
            // SAFETY: the mark says the first bytes are a `Buffer`.
            unsafe { self.head.shared.as_slice() }
        } else {
            // SAFETY: an inline string's bytes are its first `tag - 1`.
            unsafe {
                std::slice::from_raw_parts((self as *const Str).cast::<u8>(), tag as usize - 1)
            }
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
            Str::shared(buf.slice_with_length(at, len))
        }
    }

    /// A short string held inline; `b.len() <= INLINE` and UTF-8. Its words are made
    /// from whole loads of `b` (overlapping at the ends, shifted), the bytes past the
    /// length zero, so that two inline strings are equal exactly when their words are.
    #[inline]
    fn inline(b: &[u8]) -> Str {
        let n = b.len();
        debug_assert!(n <= Str::INLINE);
        // Locals, not an array indexed by a length: they stay in registers.
        let (mut w0, mut w1, mut w2) = (0u64, 0u64, 0u64);
        if n >= 8 {
            w0 = word(b, 0);
            // The last eight bytes, without those before the word they end in.
            let last = word(b, n - 8) >> ((8 - n % 8) % 8 * 8);
            match n {
                8 => {}
                9..=15 => w1 = last,
                16 => w1 = word(b, 8),
                _ => {
                    w1 = word(b, 8);
                    w2 = last;
                }
            }
        } else if n >= 4 {
            let lo = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as u64;
            let hi = u32::from_le_bytes(b[n - 4..].try_into().expect("4 bytes")) as u64;
            w0 = lo | (hi >> ((8 - n) * 8)) << 32;
        } else if n > 0 {
            w0 = b[0] as u64;
            if n > 1 {
                w0 |= (b[1] as u64) << 8;
            }
            if n > 2 {
                w0 |= (b[2] as u64) << 16;
            }
        }
        let mut w = [0u64; WORDS];
        w[0] = w0;
        w[1] = w1;
        w[2] = w2;
        w[WORDS - 1] |= (n as u64 + 1) << 56;
        // SAFETY: plain words with the inline form's tag (never zero) in the last.
        unsafe { std::mem::transmute::<[u64; WORDS], Str>(w) }
    }

    /// The piece `len` bytes from `at` of this string (UTF-8 boundaries).
    #[inline]
    fn piece(&self, at: usize, len: usize) -> Str {
        match self.buffer() {
            // SAFETY: a piece of a `Str` at char boundaries is UTF-8.
            Some(b) => unsafe { Str::from_utf8_buffer_unchecked(b, at, len) },
            None => Str::inline(&self.bytes()[at..at + len]),
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
        i = word_end(b, i);
        self.at = i;
        // Cut at ASCII bytes: both ends are char boundaries.
        Some(self.s.piece(start, i - start))
    }
}

/// Where the word from `i` of `b` ends: the first ASCII whitespace byte from `i`, or the
/// end. Eight bytes at a time: all ASCII whitespace is below `!` (0x21), so a word's bytes
/// are skipped a word at a time until one holds a byte below it (which is then checked).
#[inline]
fn word_end(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    while i + 8 <= b.len() {
        let x = word(b, i);
        // The high bit of each byte below 0x21, exact for the lowest such byte.
        let below = x.wrapping_sub(ONES * 0x21) & !x & HIGH;
        if below == 0 {
            i += 8;
            continue;
        }
        i += below.trailing_zeros() as usize / 8;
        if b[i].is_ascii_whitespace() {
            return i;
        }
        // A control byte inside a word.
        i += 1;
    }
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
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
            Str::shared(Buffer::from_vec(s.into_bytes()))
        }
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        if s.len() <= Str::INLINE {
            Str::inline(s.as_bytes())
        } else {
            Str::shared(Buffer::from_vec(s.as_bytes().to_vec()))
        }
    }
}

impl Clone for Str {
    #[inline]
    fn clone(&self) -> Str {
        match self.buffer() {
            Some(b) => Str::shared(b.clone()),
            // SAFETY: an inline string owns nothing: a copy of its words is another.
            None => unsafe { std::ptr::read(self) },
        }
    }
}

impl Drop for Str {
    #[inline]
    fn drop(&mut self) {
        if self.tag() == SHARED_MARK {
            // SAFETY: the mark says the first bytes are a `Buffer`, dropped once here.
            unsafe { ManuallyDrop::drop(&mut self.head.shared) }
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
        // A string's length decides its form, so equal strings have the same one.
        match (self.inline_words(), o.inline_words()) {
            (Some(x), Some(y)) => x == y,
            (None, None) => self.bytes() == o.bytes(),
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

/// Hashes a short string as the words its bytes fill, its length in the first; a long
/// one as its bytes (a string's length decides its form, so this agrees with `Eq`).
impl Hash for Str {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.inline_words() {
            Some(w) => {
                let n = self.tag() - 1;
                h.write_u64(w[0] ^ n << 56);
                if n > 8 {
                    h.write_u64(w[1]);
                    if n > 16 {
                        // Bytes 16 to 23 (the last of them the tag when WORDS is 3).
                        h.write_u64(w[2] & !TOP);
                    }
                }
            }
            None => hash_long(self.bytes(), h),
        }
    }
}

/// A long string's hash; out of line, so that hashing a short one inlines into the
/// hash table's lookup.
#[inline(never)]
fn hash_long<H: Hasher>(bytes: &[u8], h: &mut H) {
    bytes.hash(h)
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
#[inline(always)]
fn shared_or_copied(s: &str) -> Str {
    if s.len() <= Str::INLINE {
        return Str::inline(s.as_bytes());
    }
    shared_or_copied_long(s)
}

/// [`shared_or_copied`] of a string too long to hold inline; out of line, so that the
/// short case inlines into the row decoder.
#[inline(never)]
fn shared_or_copied_long(s: &str) -> Str {
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
    /// Inline, as serde's own impls for primitives are: a `Str` field read from a text
    /// column is then a few instructions of the row decoder, not two calls.
    #[inline(always)]
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            #[inline(always)]
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
    fn words_of_any_text_match_str_split_ascii_whitespace() {
        // Every kind of byte around a word boundary: ASCII whitespace, control bytes
        // that are not whitespace (below 0x21 too, and 0x0b), `!`, letters, UTF-8.
        let alphabet = [
            "\t",
            "\n",
            "\x0b",
            "\x0c",
            "\r",
            " ",
            "\x00",
            "\x01",
            "\x1f",
            "!",
            "a",
            "bc",
            "défg",
            "0123456789",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let mut text = String::new();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for k in 0..(state >> 59) {
                let pick = (state.rotate_left(7 * k as u32) >> 40) as usize % alphabet.len();
                text.push_str(alphabet[pick]);
            }
            let line = Str::from(text.as_str());
            let got: Vec<Str> = line.split_ascii_whitespace().collect();
            let want: Vec<&str> = text.split_ascii_whitespace().collect();
            assert_eq!(got, want, "{text:?}");
        }
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
        // The tag byte is never zero: options and results of a `Str` need no more room.
        assert_eq!(
            std::mem::size_of::<Option<Str>>(),
            std::mem::size_of::<Str>()
        );
        let text = "abcdefghijklmnopqrstuvwxyz";
        for n in 0..=Str::INLINE {
            let s = Str::from(&text[..n]);
            let words = s.inline_words().expect("inline");
            assert_eq!(s.as_str(), &text[..n], "{n}");
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let (len, padding) = bytes.split_last().unwrap();
            assert_eq!(*len as usize, n + 1);
            assert!(padding[n..].iter().all(|b| *b == 0), "padding of {n}");
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
        assert!(line.buffer().is_some());
        let words: Vec<Str> = line.split_ascii_whitespace().collect();
        assert!(words[0].buffer().is_some(), "26 bytes: shared");
        assert!(words[1].inline_words().is_some());
        assert_eq!(words[0].as_ptr(), line.as_ptr());
        assert_eq!(words, ["a-rather-long-line-of-text", "with", "words"]);
        let exact = "x".repeat(Str::INLINE);
        assert!(Str::from(exact.as_str()).inline_words().is_some());
        let over = "x".repeat(Str::INLINE + 1);
        assert!(Str::from(over.as_str()).buffer().is_some());
        // Clones and drops of both forms (a shared one's buffer is counted).
        let shared = Str::from(over.clone());
        let copies: Vec<Str> = (0..3).map(|_| shared.clone()).collect();
        drop(shared);
        assert!(
            copies
                .iter()
                .all(|c| *c == over && c.as_ptr() == copies[0].as_ptr())
        );
        assert_eq!(Str::from(exact.as_str()), exact);
    }
}
