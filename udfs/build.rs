//! Builds the guest components (examples and test jobs) for wasm32-wasip2, once, into
//! `target/flint-guest` (the same place `flint run DIR` builds to), and exports their
//! paths as constants. Modelled on wasmtime's test-programs artifacts crate.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[(&str, &str, &str)] = &[
    // (const name, package, artifact stem)
    ("WORDCOUNT", "wordcount", "wordcount"),
    ("SALES", "sales", "sales"),
    ("JOIN", "join", "join"),
    ("PAGERANK", "pagerank", "pagerank"),
    ("KMEANS", "kmeans", "kmeans"),
    ("TOPK", "topk", "topk"),
    ("TEST_JOBS", "flint-test-guests", "flint_test_jobs"),
    ("NOT_A_JOB", "flint-test-guests", "not-a-job"),
    ("BENCH_JOBS", "flint-bench-jobs", "flint_bench_jobs"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("udfs lives in the workspace")
        .to_path_buf();
    for dir in ["guest-sdk", "examples", "udfs/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("flint-guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for p in [
        "wordcount",
        "sales",
        "join",
        "pagerank",
        "kmeans",
        "topk",
        "flint-test-guests",
        "flint-bench-jobs",
    ] {
        cmd.args(["-p", p]);
    }
    // The outer build's flags are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo for the guest components");
    assert!(
        status.success(),
        "building the guest components failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    let out_dir = target_dir.join("wasm32-wasip2").join("guest");
    let mut consts = String::new();
    for (name, _, stem) in GUESTS {
        let path = out_dir.join(format!("{stem}.wasm"));
        assert!(path.is_file(), "missing guest artifact {}", path.display());
        consts.push_str(&format!(
            "/// `{stem}.wasm`\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("artifacts.rs");
    std::fs::write(out, consts).expect("writing artifacts.rs");
}
