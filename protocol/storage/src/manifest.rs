//! The `_SUCCESS` manifest of an output on object storage, where nothing renames: a job
//! writes its files, then `_SUCCESS` listing them, in one PUT that readers see whole or
//! not at all. A reader of a directory whose `_SUCCESS` is a manifest reads exactly the
//! files it lists; an empty `_SUCCESS` (Hadoop's marker) or any other content lists
//! nothing and the directory reads as usual.

use serde::{Deserialize, Serialize};

/// The file name, Hadoop's.
pub const NAME: &str = "_SUCCESS";

/// A manifest larger than this is refused (about 300,000 file names).
pub const MAX_BYTES: u64 = 32 << 20;

const COMMITTER: &str = "flint";
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `flint`: names the format, so that other engines' JSON markers are not read as one.
    pub committer: String,
    pub version: u32,
    /// The output's data files, relative to its directory (`year=2013/part-00000.parquet`).
    pub files: Vec<String>,
}

impl Manifest {
    pub fn new(mut files: Vec<String>) -> Manifest {
        files.sort();
        files.dedup();
        Manifest {
            committer: COMMITTER.into(),
            version: VERSION,
            files,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The manifest in `bytes`: `Ok(None)` for a marker that is not one (empty, or another
    /// engine's); an error for a Flint manifest that is damaged or names a file outside
    /// its directory.
    pub fn parse(bytes: &[u8]) -> Result<Option<Manifest>, String> {
        #[derive(Deserialize)]
        struct Probe {
            committer: Option<String>,
        }
        let ours = serde_json::from_slice::<Probe>(bytes)
            .is_ok_and(|p| p.committer.as_deref() == Some(COMMITTER));
        if !ours {
            return Ok(None);
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("the manifest is damaged: {e}"))?;
        if m.version != VERSION {
            return Err(format!(
                "the manifest is of version {}, this Flint reads version {VERSION}",
                m.version
            ));
        }
        if let Some(bad) = m.files.iter().find(|f| {
            f.starts_with('/') || f.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        }) {
            return Err(format!(
                "the manifest names {bad:?}, not a file of its directory"
            ));
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_other_markers_are_not_manifests() {
        let m = Manifest::new(vec!["b=1/p1".into(), "p0".into(), "p0".into()]);
        assert_eq!(m.files, ["b=1/p1", "p0"]);
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), Some(m));
        assert_eq!(Manifest::parse(b"").unwrap(), None);
        // Hadoop S3A's committer writes JSON too: not ours, so not a listing.
        assert_eq!(
            Manifest::parse(br#"{"committer":"magic","filenames":["/b/x"]}"#).unwrap(),
            None
        );
        assert!(Manifest::parse(br#"{"committer":"flint","version":1}"#).is_err());
        for bad in ["../x", "/etc/passwd", "a//b"] {
            let text = format!(r#"{{"committer":"flint","version":1,"files":["{bad}"]}}"#);
            assert!(Manifest::parse(text.as_bytes()).is_err(), "{bad}");
        }
    }
}
