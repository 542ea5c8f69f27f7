use crate::util::*;

#[test]
fn wordcount_on_two_executors_matches_an_independent_count() {
    let tmp = tempfile::tempdir().unwrap();
    let input = awkward_input(tmp.path());
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    run_ok(
        flint()
            .args([
                "run",
                flint_udfs::WORDCOUNT,
                "--executors",
                "2",
                "--cores",
                "2",
                "--summary-json",
            ])
            .arg(&summary)
            .arg("--")
            .arg(&input)
            .arg(&output),
    );
    assert_eq!(read_output(&output), count_words(&input));

    let s = read_summary(&summary);
    let execs = s["executors"].as_array().unwrap();
    assert_eq!(execs.len(), 2, "both executors reported: {s:#}");
    for e in execs {
        assert!(
            e["tasks_succeeded"].as_u64().unwrap() > 0,
            "an executor ran no task: {s:#}"
        );
    }
    let remote: u64 = execs
        .iter()
        .map(|e| e["metrics"]["shuffle_read_remote_bytes"].as_u64().unwrap())
        .sum();
    let written: u64 = execs
        .iter()
        .map(|e| e["metrics"]["shuffle_write_bytes"].as_u64().unwrap())
        .sum();
    let local: u64 = execs
        .iter()
        .map(|e| e["metrics"]["shuffle_read_local_bytes"].as_u64().unwrap())
        .sum();
    assert!(remote > 0, "no shuffle bytes crossed QUIC: {s:#}");
    assert_eq!(
        remote + local,
        written,
        "every written shuffle byte was read once"
    );
}

#[test]
fn count_and_collect_bring_results_to_the_driver_program() {
    let tmp = tempfile::tempdir().unwrap();
    let input = awkward_input(tmp.path());
    let mut lines = 0;
    let mut total_len = 0;
    for e in std::fs::read_dir(&input).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines() {
            lines += 1;
            total_len += l.len();
        }
    }
    let out = run_ok(
        flint()
            .args(["run", flint_udfs::TEST_JOBS, "--", "count"])
            .arg(&input),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("lines: {lines}")
    );
    let out = run_ok(
        flint()
            .args(["run", flint_udfs::TEST_JOBS, "--", "collect-lengths"])
            .arg(&input),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("total length: {total_len}")
    );
}

#[test]
fn run_builds_a_job_crate_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "b a b\n").unwrap();
    let output = tmp.path().join("out");
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wordcount");
    run_ok(
        flint()
            .arg("run")
            .arg(&crate_dir)
            .arg("--")
            .arg(&input)
            .arg(&output),
    );
    let expected = [("a".to_string(), 1), ("b".to_string(), 2)]
        .into_iter()
        .collect();
    assert_eq!(read_output(&output), expected);
}
