//! Job crates: `flint new NAME` writes one, and `flint run DIR` builds one for
//! wasm32-wasip2 with cargo before running the component it makes.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// A job's name and component bytes: a `.wasm` file, or a crate directory to build.
pub fn load_job(job: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let wasm = if job.is_dir() {
        build_job_crate(job)?
    } else {
        job.to_path_buf()
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading job {}", wasm.display()))?;
    let name = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into());
    Ok((name, bytes))
}

/// Writes a job crate (`Cargo.toml`, `src/lib.rs`, `.gitignore`) into the new directory
/// `dir`: a word count to start from, depending on the guest SDK at `sdk`.
pub fn new_job_crate(dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the new crate needs a directory name")?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !valid {
        bail!(
            "{name:?} is not a crate name: use letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = std::path::absolute(sdk)?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("no guest SDK at {} (give one with --sdk)", sdk.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A Flint job is one WebAssembly component: build it with `flint run .`, or
# `cargo build --target wasm32-wasip2 --release`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
flint-guest-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, wherever it is created.
[workspace]

# What `flint run` builds with: optimised, without DWARF (smaller to compile on load),
# whole-program (the SDK's decoding and hashing inline into the job's operators).
[profile.guest]
inherits = "release"
debug = false
strip = "debuginfo"
lto = "fat"
codegen-units = 1
"#,
            sdk = sdk.display().to_string()
        ),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"//! A Flint job: `flint run . -- INPUT OUTPUT` counts the words of INPUT into OUTPUT.
//!
//! `main` runs on the driver and builds a lazy plan; the closures run in tasks on the
//! executors. See the guest SDK's documentation (`cargo doc -p flint-guest-sdk --open`).

use flint::{Context, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [input, output] = ctx.args()?;
    ctx.text_file(&input)?
        .flat_map(|line: String| {
            line.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .map(|w: String| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .save_as_text(&output)?;
    Ok(())
}
"#,
    )?;
    Ok(())
}

/// `cargo build --target wasm32-wasip2 --profile guest` in a job crate; returns its `.wasm`.
pub fn build_job_crate(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} is a directory without a Cargo.toml: give a job crate or a .wasm file",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let meta = std::process::Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .with_context(|| "running cargo metadata (is cargo installed?)")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed for {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&meta.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let target_dir =
        PathBuf::from(meta["target_directory"].as_str().unwrap_or("target")).join("flint-guest");
    eprintln!("flint: building {} for wasm32-wasip2", dir.display());
    let out = std::process::Command::new(&cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building {} failed (see cargo's output above); is the target installed? `rustup target add wasm32-wasip2`",
            dir.display()
        );
    }
    let manifest_abs = std::fs::canonicalize(&manifest)?;
    let mut found = None;
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let same = msg["manifest_path"]
            .as_str()
            .map(PathBuf::from)
            .and_then(|p| std::fs::canonicalize(p).ok())
            == Some(manifest_abs.clone());
        if !same {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "{} built no .wasm: a job crate needs `crate-type = [\"cdylib\"]`",
            dir.display()
        )
    })
}
