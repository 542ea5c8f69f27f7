//! The AWS shared files an operator keeps credentials in: `~/.aws/credentials` and
//! `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`), profile
//! `AWS_PROFILE` or `default`, as the AWS CLI and SDKs read them. `object_store` reads
//! only the environment, so the hosts read these files themselves; what the
//! environment sets wins over a profile, as in the AWS SDKs. Only static keys are read:
//! a profile that assumes a role or runs a credential process is refused by name when
//! the environment has no keys either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest shared file read; AWS files are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("reading the AWS file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the AWS file {path} has {size} bytes, over the {MAX_FILE_BYTES} Flint reads")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("AWS_PROFILE is {name:?}, but neither {credentials} nor {config} has that profile")]
    NoProfile {
        name: String,
        credentials: PathBuf,
        config: PathBuf,
    },
    #[error(
        "AWS profile {name:?} gets its credentials through `{key}`, which Flint does not run; give the executors keys (aws_access_key_id) or the AWS_* environment"
    )]
    Unsupported { name: String, key: String },
    #[error("AWS profile {name:?} has `{has}` but no `{lacks}`")]
    Incomplete {
        name: String,
        has: &'static str,
        lacks: &'static str,
    },
}

/// What a profile gives; `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Why the profile gives no usable keys although it names credentials (half a
    /// pair, a role to assume): an error when the environment has no keys either.
    pub refused: Option<String>,
}

/// The profile `env` (a process environment) names, from the files it names; `None`
/// when no file has the `default` profile and none was asked for.
pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Option<Profile>, ProfileError> {
    let asked = env("AWS_PROFILE").filter(|p| !p.is_empty());
    let name = asked.clone().unwrap_or_else(|| "default".to_string());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        env(var)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = file("AWS_CONFIG_FILE", "config");
    let mut keys: Option<HashMap<String, String>> = None;
    // The config file names profiles `[profile NAME]` (and `[default]`); the
    // credentials file `[NAME]`. Credentials win.
    if let Some(path) = &config {
        let mut sections = read(path)?;
        let section = sections.remove(&format!("profile {name}")).or_else(|| {
            (name == "default")
                .then(|| sections.remove("default"))
                .flatten()
        });
        if let Some(s) = section {
            keys = Some(s);
        }
    }
    if let Some(path) = &credentials
        && let Some(s) = read(path)?.remove(&name)
    {
        keys.get_or_insert_with(HashMap::new).extend(s);
    }
    let Some(mut keys) = keys else {
        return match asked {
            Some(name) => Err(ProfileError::NoProfile {
                name,
                credentials: credentials.unwrap_or_default(),
                config: config.unwrap_or_default(),
            }),
            None => Ok(None),
        };
    };
    let mut take = |k: &str| keys.remove(k).filter(|v| !v.is_empty());
    let p = Profile {
        name: name.clone(),
        access_key_id: take("aws_access_key_id"),
        secret_access_key: take("aws_secret_access_key"),
        session_token: take("aws_session_token"),
        region: take("region"),
        endpoint_url: take("endpoint_url"),
        refused: None,
    };
    let refused = match (&p.access_key_id, &p.secret_access_key) {
        (Some(_), None) => Some(ProfileError::Incomplete {
            name,
            has: "aws_access_key_id",
            lacks: "aws_secret_access_key",
        }),
        (None, Some(_)) => Some(ProfileError::Incomplete {
            name,
            has: "aws_secret_access_key",
            lacks: "aws_access_key_id",
        }),
        (None, None) => [
            "role_arn",
            "credential_process",
            "sso_session",
            "sso_start_url",
            "web_identity_token_file",
        ]
        .into_iter()
        .find(|k| keys.contains_key(*k))
        .map(|key| ProfileError::Unsupported {
            name,
            key: key.to_string(),
        }),
        (Some(_), Some(_)) => None,
    };
    Ok(Some(Profile {
        refused: refused.map(|e| e.to_string()),
        ..p
    }))
}

/// The sections of an AWS INI file (none when it does not exist): `[name]` headers,
/// `key = value` lines, `#`/`;` comments; an indented line after `key =` belongs to a
/// nested block (`s3 =` then `  addressing_style = path`) and is kept as `key.sub`.
fn read(path: &Path) -> Result<HashMap<String, HashMap<String, String>>, ProfileError> {
    use std::io::Read;
    let io = |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io(e)),
    };
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ProfileError::TooLarge {
            path: path.to_path_buf(),
            size: std::fs::metadata(path).map_or(text.len() as u64, |m| m.len()),
        });
    }
    parse(path, &text)
}

fn parse(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, HashMap<String, String>>, ProfileError> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    let mut block: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let syntax = |message: &str| ProfileError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            message: message.to_string(),
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| syntax("a section header without its `]`"))?;
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
            block = None;
            continue;
        }
        let Some(section) = &current else {
            return Err(syntax("a setting before any [section]"));
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax("a line that is neither `[section]` nor `key = value`"))?;
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().to_string());
        let indented = raw.starts_with([' ', '\t']);
        let key = match (&block, indented) {
            (Some(b), true) => format!("{b}.{key}"),
            _ => {
                block = value.is_empty().then(|| key.clone());
                key
            }
        };
        sections
            .entry(section.clone())
            .or_default()
            .insert(key, value);
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_named_profile_merges_config_and_credentials_credentials_winning() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n\n[profile lake]\n# the lake's own store\nregion = us-east-2\nendpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\naws_access_key_id = FROMCONFIG\naws_secret_access_key = s\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[lake]\naws_access_key_id = AKIA1\naws_secret_access_key = secret/1\naws_session_token=tok\n",
        )
        .unwrap();
        let home = dir.path().display().to_string();
        let vars = [("HOME", home.clone()), ("AWS_PROFILE", "lake".to_string())];
        let p = load(env(&vars)).unwrap().unwrap();
        assert_eq!(
            p,
            Profile {
                name: "lake".into(),
                access_key_id: Some("AKIA1".into()),
                secret_access_key: Some("secret/1".into()),
                session_token: Some("tok".into()),
                region: Some("us-east-2".into()),
                endpoint_url: Some("http://127.0.0.1:9000".into()),
                refused: None,
            }
        );
        let vars = [("HOME", home.clone())];
        let d = load(env(&vars)).unwrap().unwrap();
        assert_eq!(
            (d.access_key_id.as_deref(), d.region.as_deref()),
            (Some("D"), Some("eu-west-1"))
        );
        let vars = [("HOME", home), ("AWS_PROFILE", "nope".to_string())];
        let e = load(env(&vars)).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("credentials"), "{e}");
    }

    #[test]
    fn files_named_by_the_environment_replace_the_home_ones() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id=K\naws_secret_access_key=S\n",
        )
        .unwrap();
        let vars = [
            ("HOME", "/nonexistent".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        ];
        let p = load(env(&vars)).unwrap().unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("K"));
        // No files and no profile asked for: nothing, not an error.
        assert_eq!(
            load(env(&[("HOME", "/nonexistent".to_string())])).unwrap(),
            None
        );
    }

    #[test]
    fn roles_half_keys_and_broken_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let vars = |profile: &str| {
            vec![
                ("HOME", "/nonexistent".to_string()),
                ("AWS_CONFIG_FILE", config.display().to_string()),
                ("AWS_PROFILE", profile.to_string()),
            ]
        };
        std::fs::write(
            &config,
            "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = x\n[profile half]\naws_access_key_id = K\n",
        )
        .unwrap();
        let e = load(env(&vars("role"))).unwrap().unwrap().refused.unwrap();
        assert!(e.contains("`role_arn`"), "{e}");
        let e = load(env(&vars("half"))).unwrap().unwrap().refused.unwrap();
        assert!(e.contains("no `aws_secret_access_key`"), "{e}");
        std::fs::write(&config, "[profile x]\nregion = a\njust words\n").unwrap();
        let e = load(env(&vars("x"))).unwrap_err().to_string();
        assert!(e.contains("config:3:"), "{e}");
    }
}
