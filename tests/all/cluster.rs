//! A cluster of real `flint` processes for fault tests: one driver, executors that can be
//! SIGKILLed or SIGTERMed, submitters, and the driver's log lines as events.

use crate::util::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kills the process when the test ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One line the driver logged, with when the harness read it.
pub struct LogLine {
    pub at: Instant,
    pub text: String,
}

impl LogLine {
    /// The value of a `key=value` field of a tracing line.
    pub fn field(&self, key: &str) -> Option<u64> {
        let prefix = format!("{key}=");
        self.text
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .and_then(|v| v.trim_matches('"').parse().ok())
    }
}

pub struct ProcCluster {
    pub dir: PathBuf,
    /// `cluster.json`: what executors join with.
    pub join: PathBuf,
    /// `client.json`: what tenants submit with.
    pub client: PathBuf,
    driver: Guard,
    /// Driver log lines as they come.
    pub events: mpsc::Receiver<LogLine>,
    /// Every driver line so far, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Executor processes by the id the driver gave them.
    pub executors: HashMap<u32, Guard>,
    next_work: u32,
}

/// Compiled components are shared with every test process: no compile per process.
fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flint-compiled")
}

/// The settings fault tests run with: fast heartbeats, a short timeout.
pub const FAST_FAILURE_DETECTION: &[&str] = &[
    "executor.heartbeat_interval=100ms",
    "executor.timeout=1s",
    "shuffle.fetch_timeout=1s",
];

impl ProcCluster {
    /// A driver listening on `listen` (an IP:0), with `conf` settings.
    pub fn start(dir: &Path, listen: &str, conf: &[&str]) -> ProcCluster {
        Self::start_with(dir, listen, conf, |c| c)
    }

    /// Like `start`, with a hook to wrap the driver's command.
    pub fn start_with(
        dir: &Path,
        listen: &str,
        conf: &[&str],
        wrap: impl Fn(Command) -> Command,
    ) -> ProcCluster {
        let state = dir.join("driver");
        let mut cmd = flint();
        cmd.args(["driver", "--listen", listen, "--state-dir"])
            .arg(&state)
            .arg("--cache-dir")
            .arg(shared_cache())
            // Tests run many drivers at once: never rely on port 4040 being free.
            .args(["--ui-port", "0"])
            .env("RUST_LOG", "flint_driver=debug");
        for c in conf {
            cmd.args(["--conf", c]);
        }
        let mut cmd = wrap(cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the driver");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert!(ready.contains("listening on"), "driver said {ready:?}");
        let (tx, events) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(text) = line else { break };
                    log.lock().unwrap().push(text.clone());
                    let _ = tx.send(LogLine {
                        at: Instant::now(),
                        text,
                    });
                }
            });
        }
        ProcCluster {
            dir: dir.to_path_buf(),
            join: state.join("cluster.json"),
            client: state.join("client.json"),
            driver: Guard(child),
            events,
            log,
            executors: HashMap::new(),
            next_work: 0,
        }
    }

    /// Starts an executor (through `wrap`, e.g. `ip netns exec`); returns the id the
    /// driver gave it.
    pub fn add_executor_with(
        &mut self,
        listen: &str,
        conf: &[&str],
        wrap: impl Fn(Command) -> Command,
    ) -> u32 {
        self.next_work += 1;
        let mut cmd = flint();
        cmd.args(["executor", "--cores", "1", "--listen", listen, "--join"])
            .arg(&self.join)
            .arg("--work-dir")
            .arg(self.dir.join(format!("work-{}", self.next_work)))
            .arg("--cache-dir")
            .arg(shared_cache())
            .env("RUST_LOG", "flint_executor_host=info");
        for c in conf {
            cmd.args(["--conf", c]);
        }
        let mut cmd = wrap(cmd);
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting an executor");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let id = loop {
            let line = lines
                .next()
                .expect("executor exited before registering")
                .unwrap();
            if line.contains("registered with the driver") {
                let l = LogLine {
                    at: Instant::now(),
                    text: line,
                };
                break l.field("executor").expect("executor id in its log") as u32;
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        self.executors.insert(id, Guard(child));
        id
    }

    pub fn add_executor(&mut self, conf: &[&str]) -> u32 {
        self.add_executor_with("127.0.0.1:0", conf, |c| c)
    }

    /// SIGKILL: no goodbye, no flushed buffers, its shuffle files unreachable.
    pub fn kill(&mut self, id: u32) -> Instant {
        let mut g = self.executors.remove(&id).expect("a running executor");
        g.0.kill().unwrap();
        let at = Instant::now();
        let _ = g.0.wait();
        at
    }

    /// SIGTERM: the executor should leave gracefully. Returns its exit status.
    pub fn terminate(&mut self, id: u32) -> std::process::ExitStatus {
        let mut g = self.executors.remove(&id).expect("a running executor");
        let pid = g.0.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success(), "kill -TERM {pid}");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = g.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "executor {id} ignored SIGTERM for 30s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `flint submit` of a test job in the background.
    pub fn submit(&self, job: &str, conf: &[&str], args: &[&Path], summary: &Path) -> Child {
        let mut cmd = flint();
        cmd.args(["submit", "--join"])
            .arg(&self.client)
            .arg(job)
            .arg("--summary-json")
            .arg(summary)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for c in conf {
            cmd.args(["--conf", c]);
        }
        cmd.arg("--").args(args);
        cmd.spawn().expect("starting flint submit")
    }

    /// Waits for a driver line that `pred` accepts, up to `limit`.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&LogLine) -> bool,
    ) -> Option<LogLine> {
        let end = Instant::now() + limit;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `limit` until `count` tasks whose driver log lines have `field` =
    /// `value` (`stage` or `job`) have succeeded; whether they did.
    pub fn wait_for_successes(&self, limit: Duration, field: &str, value: u64, count: u64) -> bool {
        let mut seen = 0;
        self.wait_for(limit, |l| {
            if l.text.contains("task succeeded") && l.field(field) == Some(value) {
                seen += 1;
            }
            seen >= count
        })
        .is_some()
    }

    pub fn driver_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The driver's web UI address, from its log.
    pub fn ui(&self) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("flint web UI at http://"))
            {
                return line.split("http://").nth(1).unwrap().trim().to_string();
            }
            assert!(
                Instant::now() < end,
                "the driver never printed its UI address"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a submitted word count: it must succeed, count what
    /// [`count_words`] counts, and have no failed task. Returns its summary.
    pub fn word_count_ok(
        &self,
        job: std::process::Child,
        input: &Path,
        output: &Path,
        summary: &Path,
    ) -> serde_json::Value {
        let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(120));
        assert!(
            ok,
            "stdout: {stdout}\nstderr: {stderr}\ndriver:\n{}",
            self.driver_log()
        );
        assert_eq!(read_output(output), count_words(input));
        let s = read_summary(summary);
        assert_eq!(s["failed_tasks"], 0, "no task failed: {s:#}");
        s
    }

    /// Whether the driver process is still running.
    pub fn driver_alive(&mut self) -> bool {
        self.driver.0.try_wait().unwrap().is_none()
    }

    pub fn driver_pid(&self) -> u32 {
        self.driver.0.id()
    }
}

/// Adds tenant `name` to `tenants`; returns the file its token was written to.
pub fn add_tenant_token(tmp: &Path, tenants: &Path, name: &str) -> PathBuf {
    let out = run_ok(
        flint()
            .args(["tenant", "add", name, "--tenants"])
            .arg(tenants),
    );
    let f = tmp.join(format!("{name}.token"));
    std::fs::write(&f, out.stdout).unwrap();
    f
}

/// Starts `flint submit --join CLIENT --token-file TOKEN [--conf ..] JOB -- ARGS`.
pub fn submit_as(client: &Path, token: &Path, job: &Path, conf: &[&str], args: &[&Path]) -> Child {
    let mut cmd = flint();
    cmd.args(["submit", "--join"])
        .arg(client)
        .arg("--token-file")
        .arg(token);
    for c in conf {
        cmd.args(["--conf", c]);
    }
    cmd.arg(job)
        .arg("--")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting flint submit")
}

/// Waits for a child with a time limit; kills it past the limit.
pub fn wait_child(mut child: Child, limit: Duration) -> (bool, String, String) {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                false,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                format!(
                    "timed out after {limit:?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small seeded xorshift generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// In `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `files` files of `lines` lines of words from a vocabulary of `vocab`, seeded.
pub fn seeded_input(dir: &Path, seed: u64, files: u32, lines: u32, vocab: u64) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut rng = Rng::new(seed);
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..lines {
            for _ in 0..rng.range(1, 8) {
                text.push_str(&format!("w{} ", rng.next() % vocab));
            }
            text.push('\n');
        }
        std::fs::write(input.join(format!("part-{f:02}.txt")), text).unwrap();
    }
    input
}

/// An application's tasks run in instances its earlier tasks left (no instantiation, as
/// Spark runs them in the application's executor JVMs), each task reports only its own
/// output, and no instance ever serves another application.
#[test]
fn warm_instances_serve_one_application_s_tasks_and_never_another_s() {
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("events");
    let ev = events.clone();
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[], move |mut c| {
        c.arg("--event-log").arg(&ev);
        c
    });
    cluster.add_executor(&["executor.heartbeat_interval=100ms"]);
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..20 {
        std::fs::write(input.join(format!("f{i:02}.txt")), "x\n").unwrap();
    }
    for app in 0..2 {
        let summary = tmp.path().join(format!("summary-{app}.json"));
        let out = cluster
            .submit(
                flint_udfs::TEST_JOBS,
                &[],
                &[Path::new("instance-globals"), &input],
                &summary,
            )
            .wait_with_output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One executor with one slot: one instance saw all 20 lines of the application
        // (rows 0..=19), and the second application started from a fresh one.
        assert!(
            stdout.contains("instance-globals: max=19"),
            "application {app}: {stdout}"
        );
    }
    let mut ended = Vec::new();
    for f in std::fs::read_dir(&events).unwrap() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            if e["event"] == "TaskEnded" {
                ended.push(e);
            }
        }
    }
    assert_eq!(ended.len(), 40, "20 tasks per application");
    let warm = ended
        .iter()
        .filter(|e| e["metrics"]["warm"] == true)
        .count();
    assert_eq!(warm, 38, "all but each application's first task ran warm");
    for e in &ended {
        let stdout = e["output"]["stdout"].as_str().unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "a task reports its own output only: {stdout:?}"
        );
        assert!(stdout.starts_with("task "), "{stdout:?}");
    }
}
