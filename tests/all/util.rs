use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn flint() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flint"));
    // One compiled-component cache for every test process: compile once per run.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flint-compiled");
    c.env("FLINT_CACHE_DIR", cache);
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning flint");
    assert!(
        out.status.success(),
        "flint failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs and expects failure; returns stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawning flint");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "flint should have failed: {cmd:?}\nstderr:\n{stderr}"
    );
    stderr
}

/// The application summary `--summary-json` wrote.
pub fn read_summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The word count computed here, independently of Flint.
pub fn count_words(dir: &Path) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for w in text.split_ascii_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// `word\tcount` lines of every part file; each word must appear once.
pub fn read_output(dir: &Path) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    let mut parts = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("part-") {
            assert_eq!(name, "_SUCCESS", "unexpected file in output");
            continue;
        }
        parts += 1;
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (w, n) = line
                .rsplit_once('\t')
                .unwrap_or_else(|| panic!("bad line {line:?} in {name}"));
            let prev = counts.insert(w.to_string(), n.parse().unwrap());
            assert!(prev.is_none(), "word {w:?} written twice");
        }
    }
    assert!(parts > 0, "no part files");
    counts
}

/// A multi-file input with the awkward cases: Unicode words, CRLF line endings, an empty
/// file, a file without a final newline, a line over 1 MiB, and enough text for splits.
pub fn awkward_input(dir: &Path) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("unicode.txt"),
        "naïve café Ünïcode\nπ ≈ 3.14159 straße\n日本語 テキスト naïve\n",
    )
    .unwrap();
    std::fs::write(
        input.join("crlf.txt"),
        "windows line\r\nendings here\r\nwindows again\r\n",
    )
    .unwrap();
    std::fs::write(input.join("empty.txt"), "").unwrap();
    std::fs::write(
        input.join("no-newline.txt"),
        "last line without newline\nfinal words",
    )
    .unwrap();
    let mut long = String::with_capacity(1 << 21);
    let mut i = 0u64;
    while long.len() < (1 << 20) + 1000 {
        long.push_str(&format!("tok{} ", i % 997));
        i += 1;
    }
    long.push('\n');
    long.push_str("after the long line\n");
    std::fs::write(input.join("long-line.txt"), long).unwrap();
    // Several hundred KB of ordinary text, so the input splits into many tasks.
    let mut bulk = String::new();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for line in 0..20_000 {
        for _ in 0..(line % 9 + 1) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bulk.push_str(
                [
                    "alpha", "beta", "gamma", "delta", "Epsilon", "zeta", "ëta", "θeta",
                ][(x % 8) as usize],
            );
            bulk.push_str(if x.is_multiple_of(5) { "\t" } else { " " });
        }
        bulk.push('\n');
    }
    std::fs::write(input.join("bulk.txt"), bulk).unwrap();
    input
}

/// Part files of `dir` in partition order.
pub fn parts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    v.sort();
    v
}
