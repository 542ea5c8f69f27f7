//! Whole-file compression: a file named `*.gz`, `*.zst` or `*.bz2` is read through its
//! decoder. Such a file cannot be split (a reader cannot start inside the stream), so a
//! source reads it whole, as Hadoop does for non-splittable codecs.

use flint_protocol::plan::Codec;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The whole-file codec a file's name says it is compressed with.
pub fn codec_of(path: &Path) -> Option<Codec> {
    let name = path.file_name()?.to_str()?;
    let ext = name.rsplit_once('.')?.1;
    match ext.to_ascii_lowercase().as_str() {
        "gz" | "gzip" => Some(Codec::Gzip),
        "zst" | "zstd" => Some(Codec::Zstd),
        "bz2" => Some(Codec::Bzip2),
        _ => None,
    }
}

/// Whether a line-based reader may start inside the file.
pub fn splittable(path: &Path) -> bool {
    codec_of(path).is_none()
}

/// Read buffer of a decoded file.
const READ_BUFFER: usize = 1 << 20;

/// `file`'s bytes, decoded when its name says it is compressed. A gzip file of several
/// members (as `cat a.gz b.gz` makes) reads as their concatenation.
pub fn decoded(
    path: &Path,
    file: impl Read + Send + 'static,
) -> std::io::Result<Box<dyn BufRead + Send>> {
    let raw = BufReader::with_capacity(READ_BUFFER, file);
    Ok(match codec_of(path) {
        None => Box::new(raw),
        Some(c) => Box::new(BufReader::with_capacity(READ_BUFFER, decoder(c, raw)?)),
    })
}

fn decoder<R: BufRead + Send + 'static>(
    codec: Codec,
    raw: R,
) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match codec {
        Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        Codec::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} does not compress whole files", other.name()),
            ));
        }
    })
}

/// Opens `path` (a file or an object) decoded.
pub fn open_decoded(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    decoded(path, crate::object::open(path)?)
}

/// A file being written through a whole-file codec (or none).
pub enum Encoder {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
    Bzip2(bzip2::write::BzEncoder<BufWriter<File>>),
}

impl Encoder {
    /// `file` written through `codec`; `Uncompressed` writes it as is.
    pub fn new(codec: Codec, file: File) -> std::io::Result<Encoder> {
        let out = BufWriter::with_capacity(1 << 20, file);
        Ok(match codec {
            Codec::Uncompressed => Encoder::Plain(out),
            Codec::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
            Codec::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::default(),
            )),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} does not compress whole files", other.name()),
                ));
            }
        })
    }

    /// Ends the stream and syncs the file.
    pub fn finish(self) -> std::io::Result<()> {
        let out = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
            Encoder::Bzip2(w) => w.finish()?,
        };
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
            Encoder::Bzip2(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
            Encoder::Bzip2(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_codec_round_trips_and_is_known_by_its_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        for codec in [Codec::Uncompressed, Codec::Gzip, Codec::Zstd, Codec::Bzip2] {
            let path = dir.path().join(format!("t.txt{}", codec.file_suffix()));
            let mut e = Encoder::new(codec, File::create(&path).unwrap()).unwrap();
            e.write_all(text.as_bytes()).unwrap();
            e.finish().unwrap();
            let written = std::fs::metadata(&path).unwrap().len();
            assert_eq!(
                codec_of(&path),
                (codec != Codec::Uncompressed).then_some(codec)
            );
            assert_eq!(splittable(&path), codec == Codec::Uncompressed);
            if codec != Codec::Uncompressed {
                assert!(written < text.len() as u64 / 3, "{codec:?}: {written}");
            }
            let mut back = String::new();
            open_decoded(&path)
                .unwrap()
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text, "{codec:?}");
        }
    }

    #[test]
    fn concatenated_gzip_members_read_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.gz");
        let mut all = Vec::new();
        for part in ["a\n", "b\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            all.extend(e.finish().unwrap());
        }
        std::fs::write(&path, all).unwrap();
        let mut back = String::new();
        open_decoded(&path)
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "a\nb\n");
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["bad.gz", "bad.zst", "bad.bz2"] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"this is not compressed at all").unwrap();
            let mut back = Vec::new();
            let r = open_decoded(&path).and_then(|mut r| r.read_to_end(&mut back));
            assert!(r.is_err(), "{name}");
        }
    }
}
