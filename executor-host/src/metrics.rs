//! An executor's counters, rendered in the Prometheus text format by whoever serves them
//! (`flint executor --metrics-addr`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ExecutorMetrics {
    pub slots: AtomicU64,
    pub slots_busy: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub tasks_killed: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub sandbox_limit_hits: AtomicU64,
    pub compile_cache_hits: AtomicU64,
    pub compile_cache_misses: AtomicU64,
    pub shuffle_write_bytes: AtomicU64,
    pub shuffle_fetch_remote_bytes: AtomicU64,
    pub shuffle_read_local_bytes: AtomicU64,
    /// Bytes tasks spilled (guest runs and map output past the host's buffer).
    pub spill_bytes: AtomicU64,
    /// Shared with the shuffle server, which counts what it sends.
    pub shuffle_served_bytes: Arc<AtomicU64>,
}

impl ExecutorMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 14] = [
            ("flint_executor_slots", "gauge", "", g(&self.slots)),
            (
                "flint_executor_slots_busy",
                "gauge",
                "",
                g(&self.slots_busy),
            ),
            (
                "flint_executor_tasks_total",
                "counter",
                r#"{state="succeeded"}"#,
                g(&self.tasks_succeeded),
            ),
            (
                "flint_executor_tasks_total",
                "counter",
                r#"{state="failed"}"#,
                g(&self.tasks_failed),
            ),
            (
                "flint_executor_tasks_total",
                "counter",
                r#"{state="killed"}"#,
                g(&self.tasks_killed),
            ),
            (
                "flint_executor_tasks_total",
                "counter",
                r#"{state="fetch_failed"}"#,
                g(&self.fetch_failures),
            ),
            (
                "flint_executor_sandbox_limit_hits_total",
                "counter",
                "",
                g(&self.sandbox_limit_hits),
            ),
            (
                "flint_executor_compile_cache_total",
                "counter",
                r#"{result="hit"}"#,
                g(&self.compile_cache_hits),
            ),
            (
                "flint_executor_compile_cache_total",
                "counter",
                r#"{result="miss"}"#,
                g(&self.compile_cache_misses),
            ),
            (
                "flint_executor_shuffle_write_bytes_total",
                "counter",
                "",
                g(&self.shuffle_write_bytes),
            ),
            (
                "flint_executor_spill_bytes_total",
                "counter",
                "",
                g(&self.spill_bytes),
            ),
            (
                "flint_executor_shuffle_read_bytes_total",
                "counter",
                r#"{from="remote"}"#,
                g(&self.shuffle_fetch_remote_bytes),
            ),
            (
                "flint_executor_shuffle_read_bytes_total",
                "counter",
                r#"{from="local"}"#,
                g(&self.shuffle_read_local_bytes),
            ),
            (
                "flint_executor_shuffle_served_bytes_total",
                "counter",
                "",
                g(&self.shuffle_served_bytes),
            ),
        ];
        let mut out = String::new();
        let mut last = "";
        for (name, kind, labels, v) in rows {
            if name != last {
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                last = name;
            }
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
        out
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub fn serve(
    listener: Arc<std::net::TcpListener>,
    metrics: Arc<ExecutorMetrics>,
) -> std::io::Result<()> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(())
}
