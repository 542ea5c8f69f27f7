//! The web UI, its JSON API, the event log and `flint history`, Prometheus metrics, and
//! a real browser (Debian's Chromium, headless) reading the pages.

use crate::cluster::*;
use crate::util::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, path, None)
}

/// A GET with `Authorization: Bearer TOKEN` when a token is given: (status, body).
pub fn http_get_as(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The body of a GET.
pub fn get_body(addr: &str, path: &str) -> String {
    http_get(addr, path).1
}

pub fn api(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn ui_addr(line: &LogLine) -> String {
    line.text
        .split("http://")
        .nth(1)
        .expect("an address")
        .trim()
        .to_string()
}

/// Debian's Chromium, if this machine has it (`.ci/run` installs it).
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn headless(chromium: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,1000",
    ]);
    c
}

/// The DOM after Chromium loaded and rendered `url`.
fn browser_dom(chromium: &Path, url: &str) -> String {
    let out = headless(chromium)
        .arg("--dump-dom")
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --dump-dom {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(chromium: &Path, url: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    let _ = std::fs::remove_file(&file);
    let st = headless(chromium)
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success() && file.is_file(), "screenshot of {url}");
    file
}

#[test]
fn live_ui_history_replay_metrics_and_a_browser_agree_on_a_multi_stage_job() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seeded_input(tmp.path(), 5, 6, 10, 40);
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    let events = tmp.path().join("events");
    let ev = events.clone();
    let mut cluster = ProcCluster::start_with(
        tmp.path(),
        "127.0.0.1:0",
        &["executor.heartbeat_interval=200ms"],
        move |mut c| {
            c.arg("--event-log").arg(&ev);
            c
        },
    );
    let ui = ui_addr(
        &cluster
            .wait_for(Duration::from_secs(30), |l| {
                l.text.contains("flint web UI at")
            })
            .expect("the driver prints its UI address"),
    );
    cluster.add_executor(&[]);
    cluster.add_executor(&[]);
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &["shuffle.partitions=3"],
        &[Path::new("slow-wordcount"), &input, &output],
        &summary,
    );
    let browser = chromium();
    // While it runs: the job page refreshes itself and shows a running job.
    cluster
        .wait_for(Duration::from_secs(60), |l| {
            l.text.contains("task succeeded")
        })
        .expect("tasks run");
    let (status, running_page) = http_get(&ui, "/jobs/1");
    assert_eq!(status, 200);
    assert!(
        running_page.contains(r#"http-equiv="refresh""#),
        "{running_page}"
    );
    let running = api(&ui, "/api/v1/jobs/1");
    assert_eq!(running["state"], "running", "{running:#}");
    if let Some(c) = &browser {
        let shot = screenshot(c, &format!("http://{ui}/jobs/1"), "job-running.png");
        eprintln!("screenshot: {}", shot.display());
    }
    let (ok, _, stderr) = wait_child(job, Duration::from_secs(120));
    assert!(ok, "{stderr}");
    assert_eq!(read_output(&output), count_words(&input));

    // The JSON API after the job: numbers that must add up.
    let job1 = api(&ui, "/api/v1/jobs/1");
    assert_eq!(job1["state"], "succeeded", "{job1:#}");
    assert_eq!(job1["stages_done"], 2);
    assert_eq!(job1["stages_total"], 2);
    let stages = job1["stages"].as_array().unwrap();
    assert_eq!(stages[0]["partitions"], 6);
    // Adaptive execution had one task read the 3 small shuffle partitions, and says so.
    assert_eq!(stages[1]["partitions"], 1);
    let adaptive = job1["adaptive"].as_array().unwrap();
    assert!(
        adaptive.len() == 1
            && adaptive[0]
                .as_str()
                .unwrap()
                .starts_with("stage 1 reads its 3 shuffle partitions"),
        "{job1:#}"
    );
    let (_, job_page) = http_get(&ui, "/jobs/1");
    assert!(
        job_page.contains("<h2>Adaptive execution</h2>") && job_page.contains("in 1 tasks"),
        "{job_page}"
    );
    assert_eq!(stages[1]["parents"], serde_json::json!([0]));
    assert!(
        stages[1]["started_ms"].as_u64() >= stages[0]["completed_ms"].as_u64()
            && stages[0]["completed_ms"].as_u64().is_some(),
        "the reduce stage starts after the map stage ends: {job1:#}"
    );
    let map = api(&ui, "/api/v1/jobs/1/stages/0");
    let tasks = map["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 6, "{map:#}");
    let written: u64 = tasks
        .iter()
        .filter(|t| t["state"] == "succeeded")
        .map(|t| t["metrics"]["shuffle_write_bytes"].as_u64().unwrap())
        .sum();
    assert!(written > 0);
    assert_eq!(
        map["map_output_bytes"].as_u64(),
        Some(written),
        "task shuffle writes add up to the map output the driver tracked"
    );
    let records: u64 = tasks
        .iter()
        .map(|t| t["metrics"]["input_records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 60, "6 files of 10 lines");
    let reduce = api(&ui, "/api/v1/jobs/1/stages/1");
    let read: u64 = reduce["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["metrics"]["shuffle_read_local_bytes"].as_u64().unwrap()
                + t["metrics"]["shuffle_read_remote_bytes"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        read, written,
        "what the reduce side read is what the map side wrote"
    );
    let q = &map["duration_ms_quantiles"];
    assert!(q["min"].as_u64() <= q["median"].as_u64() && q["median"].as_u64() <= q["max"].as_u64());
    let execs = api(&ui, "/api/v1/executors");
    let execs = execs.as_array().unwrap();
    assert_eq!(execs.len(), 2);
    let done: u64 = execs
        .iter()
        .map(|e| e["tasks_succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(done, 7, "6 map tasks and 1 reduce task");

    // Prometheus: the driver's, and an executor's own.
    let (status, prom) = http_get(&ui, "/metrics");
    assert_eq!(status, 200);
    assert!(
        prom.contains("flint_tasks_total{state=\"succeeded\"} 7"),
        "{prom}"
    );
    assert!(
        prom.contains(&format!("flint_shuffle_write_bytes_total {written}")),
        "{prom}"
    );
    let per_executor: u64 = execs
        .iter()
        .map(|e| {
            let (status, text) = http_get(e["metrics_addr"].as_str().unwrap(), "/metrics");
            assert_eq!(status, 200);
            let line = text
                .lines()
                .find(|l| l.starts_with("flint_executor_tasks_total{state=\"succeeded\"}"))
                .unwrap_or_else(|| panic!("{text}"));
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(per_executor, 7);

    // A browser renders the pages with the right numbers.
    match &browser {
        Some(c) => {
            let dag = browser_dom(c, &format!("http://{ui}/jobs/1"));
            assert_eq!(dag.matches(r#"class="stage""#).count(), 2, "{dag}");
            assert!(
                dag.contains("6/6 tasks") && dag.contains("1/1 tasks"),
                "{dag}"
            );
            assert!(dag.contains("shuffle"), "{dag}");
            let stage = browser_dom(c, &format!("http://{ui}/jobs/1/stages/0"));
            assert_eq!(stage.matches(r#"<tr class="task">"#).count(), 6, "{stage}");
            let exec = browser_dom(c, &format!("http://{ui}/executors"));
            assert_eq!(
                exec.matches(r#"<tr class="executor">"#).count(),
                2,
                "{exec}"
            );
            for (page, name) in [
                ("/jobs/1", "job.png"),
                ("/jobs/1/stages/0", "stage.png"),
                ("/executors", "executors.png"),
            ] {
                let shot = screenshot(c, &format!("http://{ui}{page}"), name);
                eprintln!("screenshot: {}", shot.display());
            }
        }
        None => eprintln!("SKIPPED the browser part: no chromium here (.ci/run installs it)"),
    }

    // `flint history` serves the same job and stage numbers from the event log.
    let mut history = flint()
        .arg("history")
        .arg(&events)
        .args(["--ui-port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(history.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("history prints its address").unwrap();
        if line.contains("flint web UI at") {
            break ui_addr(&LogLine {
                at: std::time::Instant::now(),
                text: line,
            });
        }
    };
    let _history = Guard(history);
    assert_eq!(api(&addr, "/api/v1/jobs/1"), job1);
    assert_eq!(api(&addr, "/api/v1/jobs/1/stages/0"), map);
    assert_eq!(api(&addr, "/api/v1/jobs/1/stages/1"), reduce);
    let (status, page) = http_get(&addr, "/jobs/1");
    assert_eq!(status, 200);
    assert!(!page.contains("http-equiv"), "a replay does not refresh");
    let (status, _) = http_get(&addr, "/jobs/2");
    assert_eq!(status, 404);
}
