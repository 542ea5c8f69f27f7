use crate::util::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// Kills the process when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn driver_two_executors_and_submit_as_separate_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut driver = flint()
        .args([
            "driver",
            "--listen",
            "127.0.0.1:0",
            "--ui-port",
            "0",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(driver.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _driver = Guard(driver);
    assert!(
        ready.contains("listening on 127.0.0.1:"),
        "driver said {ready:?}"
    );
    let join = state.join("cluster.json");
    assert!(join.is_file());
    let client = state.join("client.json");
    assert!(client.is_file());
    let _executors: Vec<Guard> = (0..2)
        .map(|i| {
            Guard(
                flint()
                    .args(["executor", "--cores", "2", "--join"])
                    .arg(&join)
                    .arg("--work-dir")
                    .arg(tmp.path().join(format!("work-{i}")))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let input = awkward_input(tmp.path());
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    run_ok(
        flint()
            .args(["submit", "--join"])
            .arg(&client)
            .arg(flint_udfs::WORDCOUNT)
            .arg("--summary-json")
            .arg(&summary)
            .arg("--")
            .arg(&input)
            .arg(&output),
    );
    assert_eq!(read_output(&output), count_words(&input));
    let s = read_summary(&summary);
    assert_eq!(s["executors"].as_array().unwrap().len(), 2, "{s:#}");

    // A failing job exits non-zero with its error chain, and the cluster stays usable.
    let err = run_err(
        flint()
            .args(["submit", "--join"])
            .arg(&client)
            .arg(flint_udfs::TEST_JOBS)
            .args(["--", "error-in-main"]),
    );
    assert!(
        err.contains("the job gave up") && err.contains("deliberate failure"),
        "{err}"
    );
    let out = run_ok(
        flint()
            .args(["submit", "--join"])
            .arg(&client)
            .arg(flint_udfs::TEST_JOBS)
            .args(["--", "count"])
            .arg(&input),
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lines: "));
}
