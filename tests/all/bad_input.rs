use crate::util::*;

#[test]
fn missing_input_path_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = tmp.path().join("out");
    let err = run_err(
        flint()
            .args(["run", flint_udfs::WORDCOUNT, "--"])
            .arg(&missing)
            .arg(&out),
    );
    assert!(
        err.contains(&format!("input path {} does not exist", missing.display())),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn existing_output_directory_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "a b\n").unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let err = run_err(
        flint()
            .args(["run", flint_udfs::WORDCOUNT, "--"])
            .arg(&input)
            .arg(&out),
    );
    assert!(err.contains("already exists and is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn a_component_that_is_not_a_flint_job_is_refused() {
    let err = run_err(flint().args(["run", flint_udfs::NOT_A_JOB, "--", "x"]));
    assert!(err.contains("not a Flint job"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm at all").unwrap();
    let err = run_err(flint().arg("run").arg(&junk));
    assert!(err.contains("not WebAssembly"), "{err}");
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = run_err(flint().arg("run").arg(&core));
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[test]
fn a_guest_panic_in_a_task_fails_the_job_with_its_message_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "fine\nthis goes boom\nfine too\n").unwrap();
    let out = tmp.path().join("out");
    let err = run_err(
        flint()
            .args([
                "run",
                flint_udfs::TEST_JOBS,
                "--conf",
                "task.max_failures=2",
                "--",
                "panic-in-task",
            ])
            .arg(&input)
            .arg(&out),
    );
    assert!(
        err.contains("deliberate panic on line \"this goes boom\""),
        "{err}"
    );
    assert!(err.contains("failed 2 times"), "{err}");
    assert!(err.contains("partition 0"), "{err}");
    assert!(!out.exists(), "a failed job leaves no output");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no staging left behind: {leftovers:?}");
}

#[test]
fn errors_and_panics_in_main_are_reported() {
    let err = run_err(flint().args(["run", flint_udfs::TEST_JOBS, "--", "error-in-main"]));
    assert!(
        err.contains("the job gave up") && err.contains("deliberate failure"),
        "{err}"
    );
    let err = run_err(flint().args(["run", flint_udfs::TEST_JOBS, "--", "panic-in-main"]));
    assert!(err.contains("deliberate panic in main"), "{err}");
}

#[test]
fn bad_settings_are_named() {
    let err = run_err(flint().args([
        "run",
        flint_udfs::WORDCOUNT,
        "--conf",
        "task.max_failure=3",
        "--",
        "a",
        "b",
    ]));
    assert!(err.contains("unknown setting `task.max_failure`"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("flint.conf");
    std::fs::write(&f, "task.max_failures = 2\nexecutor.timeout = forever\n").unwrap();
    let err = run_err(
        flint()
            .args(["run", flint_udfs::WORDCOUNT, "--conf-file"])
            .arg(&f)
            .args(["--", "a", "b"]),
    );
    assert!(
        err.contains("flint.conf:2") && err.contains("forever"),
        "{err}"
    );
}
