//! Server-rendered pages: plain HTML and inline SVG, readable without JavaScript; live
//! pages refresh themselves while something runs.

use super::state::{JobView, StageView, UiState};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ms(n: u64) -> String {
    if n >= 10_000 {
        format!("{:.1} s", n as f64 / 1000.0)
    } else {
        format!("{n} ms")
    }
}

fn page(title: &str, body: &str, refresh: bool) -> String {
    let meta = if refresh {
        r#"<meta http-equiv="refresh" content="2">"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">{meta}<title>{t} · Flint</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:0 2em 2em;color:#222}}
nav{{background:#1d3557;margin:0 -2em 1em;padding:.6em 2em}} nav a{{color:#fff;margin-right:1.5em;text-decoration:none;font-weight:600}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}} th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}
th{{background:#f1f3f5}} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.running{{color:#1971c2}} .succeeded,.done,.alive{{color:#2b8a3e}} .failed,.lost,.fetch_failed{{color:#c92a2a}} .killed,.waiting,.decommissioning{{color:#868e96}}
pre{{margin:0;white-space:pre-wrap;max-width:60em}}
</style></head><body><nav><a href="/">Jobs</a><a href="/executors">Executors</a></nav>
<h1>{t}</h1>
{body}
</body></html>"#,
        t = esc(title)
    )
}

pub fn jobs(jobs: &[&JobView], live: bool, now: u64) -> String {
    let mut rows = String::new();
    for j in jobs.iter().rev() {
        rows.push_str(&format!(
            r#"<tr><td class="n"><a href="/jobs/{id}">{id}</a></td><td>{tenant}</td><td>{name}</td><td>{action}</td><td class="{state}">{state}</td><td class="n">{dur}</td><td class="n">{done}/{total}</td></tr>"#,
            id = j.id,
            tenant = esc(&j.tenant),
            name = esc(&j.name),
            action = esc(&j.action),
            state = j.state,
            dur = ms(j.duration_ms(now)),
            done = j.stages_done(),
            total = j.stages.len(),
        ));
    }
    let running = jobs.iter().any(|j| j.state == "running");
    let body = format!(
        "<p>{} job(s), {} running. {}</p><table><tr><th>Job</th><th>Tenant</th><th>Name</th><th>Action</th><th>State</th><th>Duration</th><th>Stages done/total</th></tr>{rows}</table>",
        jobs.len(),
        jobs.iter().filter(|j| j.state == "running").count(),
        if live {
            "Live."
        } else {
            "Replayed from event logs."
        }
    );
    page("Jobs", &body, live && running)
}

/// The stage DAG: a column per depth, boxes linked to stage pages, shuffle edges.
fn dag_svg(j: &JobView) -> String {
    let n = j.stages.len();
    let mut depth = vec![0usize; n];
    for (i, s) in j.stages.iter().enumerate() {
        depth[i] = s
            .info
            .parents
            .iter()
            .filter_map(|p| depth.get(*p as usize).map(|d| d + 1))
            .max()
            .unwrap_or(0);
    }
    let mut row = vec![0usize; n];
    let mut per_depth = std::collections::HashMap::new();
    for i in 0..n {
        let r = per_depth.entry(depth[i]).or_insert(0usize);
        row[i] = *r;
        *r += 1;
    }
    let (bw, bh, gx, gy) = (240, 74, 90, 24);
    let pos = |i: usize| (20 + depth[i] * (bw + gx), 20 + row[i] * (bh + gy));
    let width = 40 + (depth.iter().max().copied().unwrap_or(0) + 1) * (bw + gx);
    let height = 40 + per_depth.values().max().copied().unwrap_or(1) * (bh + gy);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="stage DAG">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0L10,5L0,10z" fill="#495057"/></marker></defs>"##
    );
    for (i, s) in j.stages.iter().enumerate() {
        for p in &s.info.parents {
            let p = *p as usize;
            if p >= n {
                continue;
            }
            let (px, py) = pos(p);
            let (cx, cy) = pos(i);
            let (x1, y1, x2, y2) = (px + bw, py + bh / 2, cx, cy + bh / 2);
            svg.push_str(&format!(
                r##"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#495057" stroke-width="2" stroke-dasharray="6 3" marker-end="url(#arrow)"/><text x="{tx}" y="{ty}" font-size="11" text-anchor="middle" fill="#495057">shuffle</text>"##,
                tx = (x1 + x2) / 2,
                ty = (y1 + y2) / 2 - 6,
            ));
        }
    }
    for (i, s) in j.stages.iter().enumerate() {
        let (x, y) = pos(i);
        let state = s.state();
        let fill = match state {
            "done" => "#d3f9d8",
            "running" => "#d0ebff",
            _ => "#f1f3f5",
        };
        let name: String = s.info.name.chars().take(38).collect();
        svg.push_str(&format!(
            r##"<a href="/jobs/{job}/stages/{i}"><rect class="stage" data-stage="{i}" x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="{fill}" stroke="#1d3557"/><text x="{tx}" y="{y1}" font-weight="600">Stage {i} · {state}</text><text x="{tx}" y="{y2}" font-size="12">{done}/{total} tasks</text><text x="{tx}" y="{y3}" font-size="11" fill="#495057">{name}</text></a>"##,
            job = j.id,
            tx = x + 10,
            y1 = y + 20,
            y2 = y + 40,
            y3 = y + 60,
            done = s.partitions_done(),
            total = s.info.partitions,
            name = esc(&name),
        ));
    }
    svg.push_str("</svg>");
    svg
}

pub fn job(j: &JobView, live: bool, now: u64) -> String {
    let mut rows = String::new();
    for s in &j.stages {
        let t = s.totals();
        let c = s.counts();
        rows.push_str(&format!(
            r#"<tr><td class="n"><a href="/jobs/{job}/stages/{i}">{i}</a></td><td>{name}</td><td class="{state}">{state}</td><td class="n">{done}/{total}</td><td class="n">{failed}</td><td class="n">{rin}</td><td class="n">{sr}</td><td class="n">{sw}</td><td class="n">{spill}</td></tr>"#,
            job = j.id,
            i = s.info.index,
            name = esc(&s.info.name),
            state = s.state(),
            done = s.partitions_done(),
            total = s.info.partitions,
            failed = c.failed + c.fetch_failed,
            rin = t.input_records,
            sr = bytes(t.shuffle_read_local_bytes + t.shuffle_read_remote_bytes),
            sw = bytes(t.shuffle_write_bytes),
            spill = if t.spill_count == 0 {
                "—".to_string()
            } else {
                format!("{} in {} run(s)", bytes(t.spill_bytes), t.spill_count)
            },
        ));
    }
    let mut error = if j.error.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Error</h2><pre>{}</pre>",
            esc(&j.error.join("\n  caused by: "))
        )
    };
    if !j.adaptive.is_empty() {
        let items: String = j
            .adaptive
            .iter()
            .map(|c| format!("<li>{}</li>", esc(c)))
            .collect();
        error.push_str(&format!("<h2>Adaptive execution</h2><ul>{items}</ul>"));
    }
    let body = format!(
        r#"<p>{name} · {action} · tenant {tenant} · <span class="{state}">{state}</span> · {dur} · stages {done}/{total}</p>
<h2>Stages</h2>{svg}
<table><tr><th>Stage</th><th>Pipeline</th><th>State</th><th>Tasks done/total</th><th>Failed attempts</th><th>Input records</th><th>Shuffle read</th><th>Shuffle write</th><th>Spilled</th></tr>{rows}</table>{error}"#,
        name = esc(&j.name),
        action = esc(&j.action),
        tenant = esc(&j.tenant),
        state = j.state,
        dur = ms(j.duration_ms(now)),
        done = j.stages_done(),
        total = j.stages.len(),
        svg = dag_svg(j),
    );
    page(
        &format!("Job {}", j.id),
        &body,
        live && j.state == "running",
    )
}

/// One bar per attempt, height by duration; stragglers (over 1.5× the median) and
/// failures stand out in red.
fn durations_svg(s: &StageView, now: u64) -> String {
    let median = s.durations().map(|q| q.median).unwrap_or(0);
    let max = s
        .tasks
        .iter()
        .map(|t| t.duration_ms(now))
        .max()
        .unwrap_or(1)
        .max(1);
    let n = s.tasks.len().max(1);
    let bw = (720 / n).clamp(3, 40);
    let (w, h) = (bw * n + 60, 180);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="task durations"><text x="0" y="12" font-size="11">{max_label}</text><line x1="50" y1="{base}" x2="{w}" y2="{base}" stroke="#868e96"/>"##,
        max_label = ms(max),
        base = h - 20,
    );
    for (i, t) in s.tasks.iter().enumerate() {
        let d = t.duration_ms(now);
        let bar = ((d as f64 / max as f64) * (h - 40) as f64).max(1.0) as usize;
        let slow = median > 0 && d * 2 > median * 3;
        let fill = match t.state.as_str() {
            "succeeded" if slow => "#e03131",
            "succeeded" => "#4dabf7",
            "running" => "#a5d8ff",
            "killed" => "#ced4da",
            _ => "#c92a2a",
        };
        svg.push_str(&format!(
            r#"<rect x="{x}" y="{y}" width="{bw1}" height="{bar}" fill="{fill}"><title>partition {p} attempt {a} on executor {e}: {d} ms, {state}</title></rect>"#,
            x = 50 + i * bw,
            y = h - 20 - bar,
            bw1 = bw.saturating_sub(1).max(1),
            p = t.partition,
            a = t.attempt,
            e = t.executor,
            state = t.state,
        ));
    }
    svg.push_str("</svg>");
    svg
}

pub fn stage(j: &JobView, s: &StageView, live: bool, now: u64) -> String {
    let c = s.counts();
    let q = s
        .durations()
        .map(|q| {
            format!(
                r#"<table><tr><th>Task duration</th><th>Min</th><th>25th percentile</th><th>Median</th><th>75th percentile</th><th>Max</th></tr><tr><td>successful attempts</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr></table>"#,
                ms(q.min),
                ms(q.p25),
                ms(q.median),
                ms(q.p75),
                ms(q.max)
            )
        })
        .unwrap_or_default();
    let mut rows = String::new();
    for t in &s.tasks {
        let m = &t.metrics;
        rows.push_str(&format!(
            r#"<tr class="task"><td class="n">{p}</td><td class="n">{a}{spec}</td><td class="n">{e}</td><td class="{state}">{state}</td><td class="n">{d}</td><td class="n">{ir}</td><td class="n">{ib}</td><td class="n">{sr}</td><td class="n">{sw}</td><td class="n">{load}</td><td class="n">{inst} µs</td><td class="n">{mem}</td><td class="n">{fuel}</td><td><pre>{err}</pre></td><td><pre>{out}</pre></td></tr>"#,
            p = t.partition,
            a = t.attempt,
            spec = if t.speculative { " (speculative)" } else { "" },
            e = t.executor,
            state = t.state,
            d = ms(t.duration_ms(now)),
            ir = m.input_records,
            ib = bytes(m.input_bytes),
            sr = bytes(m.shuffle_read_local_bytes + m.shuffle_read_remote_bytes),
            sw = bytes(m.shuffle_write_bytes),
            load = if m.compiled {
                format!("compiled, {} ms", m.load_ms)
            } else {
                format!("cache hit, {} ms", m.load_ms)
            },
            inst = m.instantiate_us,
            mem = bytes(m.peak_memory_bytes),
            fuel = m.fuel.map_or("–".to_string(), |f| f.to_string()),
            err = esc(&t.error.join("\n  caused by: ")),
            out = esc(&[t.output.stdout.trim_end(), t.output.stderr.trim_end()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("\n")),
        ));
    }
    let tracked = s
        .map_output_bytes
        .map(|b| format!(" · map output tracked by the driver: {}", bytes(b)))
        .unwrap_or_default();
    let body = format!(
        r#"<p><a href="/jobs/{job}">Job {job}</a> · {name} · <span class="{state}">{state}</span> · {done}/{total} partitions done{tracked}</p>
<table><tr><th>Running</th><th>Succeeded</th><th>Failed</th><th>Fetch failed</th><th>Killed</th><th>Lost</th></tr><tr><td class="n">{cr}</td><td class="n">{cs}</td><td class="n">{cf}</td><td class="n">{cff}</td><td class="n">{ck}</td><td class="n">{cl}</td></tr></table>
{q}<h2>Duration per attempt</h2>{bars}
<h2>Tasks</h2><table><tr><th>Partition</th><th>Attempt</th><th>Executor</th><th>State</th><th>Duration</th><th>Input records</th><th>Input bytes</th><th>Shuffle read</th><th>Shuffle write</th><th>Wasm compile / cache</th><th>Instantiate</th><th>Peak guest memory</th><th>Fuel</th><th>Error</th><th>Guest output</th></tr>{rows}</table>"#,
        job = j.id,
        name = esc(&s.info.name),
        state = s.state(),
        done = s.partitions_done(),
        total = s.info.partitions,
        cr = c.running,
        cs = c.succeeded,
        cf = c.failed,
        cff = c.fetch_failed,
        ck = c.killed,
        cl = c.lost,
        bars = durations_svg(s, now),
    );
    page(
        &format!("Stage {}.{}", j.id, s.info.index),
        &body,
        live && j.state == "running",
    )
}

pub fn executors(st: &UiState, live: bool, now: u64) -> String {
    let mut rows = String::new();
    for e in st.executors.values() {
        let metrics = e
            .metrics_addr
            .as_ref()
            .map(|a| format!(r#"<a href="http://{0}/metrics">{0}</a>"#, esc(a)))
            .unwrap_or_else(|| "–".into());
        let reason = e
            .reason
            .iter()
            .chain(e.exclusions.iter())
            .map(|r| esc(r))
            .collect::<Vec<_>>()
            .join("<br>");
        rows.push_str(&format!(
            r#"<tr class="executor"><td class="n">{id}</td><td>{addr}</td><td class="n">{cores}</td><td class="n">{run}</td><td class="n">{ok}</td><td class="n">{failed}</td><td class="n">{killed}</td><td class="n">{sw}</td><td class="n">{sr}</td><td class="n">{seen} ago</td><td class="{state}">{state}</td><td>{reason}</td><td>{metrics}</td></tr>"#,
            id = e.id,
            addr = esc(&e.addr),
            cores = e.cores,
            run = e.tasks_running,
            ok = e.tasks_succeeded,
            failed = e.tasks_failed,
            killed = e.tasks_killed,
            sw = bytes(e.shuffle_write_bytes),
            sr = bytes(e.shuffle_read_bytes),
            seen = ms(now.saturating_sub(e.last_seen_ms)),
            state = if e.state == "alive" && !e.exclusions.is_empty() {
                "excluded".to_string()
            } else {
                esc(&e.state)
            },
        ));
    }
    let body = format!(
        "<table><tr><th>Executor</th><th>Address</th><th>Cores</th><th>Running</th><th>Succeeded</th><th>Failed</th><th>Killed</th><th>Shuffle written</th><th>Shuffle read</th><th>Last heard</th><th>State</th><th>Reason</th><th>Metrics</th></tr>{rows}</table>"
    );
    let running = st.jobs.values().any(|j| j.state == "running");
    page("Executors", &body, live && running)
}
