//! The example jobs in `examples/`, each run on a local cluster of 2 executor processes
//! over seeded data, and checked against results computed here independently.

use crate::cluster::Rng;
use crate::util::*;
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn run_example(wasm: &str, conf: &[&str], args: &[&Path]) -> std::process::Output {
    let mut cmd = flint();
    cmd.args(["run", wasm, "--executors", "2"]);
    for c in conf {
        cmd.args(["--conf", c]);
    }
    cmd.arg("--");
    for a in args {
        cmd.arg(a);
    }
    run_ok(&mut cmd)
}

fn read_parquet(dir: &Path) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for p in parts(dir) {
        let f = std::fs::File::open(&p).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        out.extend(r.map(|b| b.unwrap()));
    }
    out
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| {
            panic!(
                "column {name} has type {}",
                b.column_by_name(name).unwrap().data_type()
            )
        })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];

type Totals = BTreeMap<String, (u64, i64, f64)>;

/// Writes `files` CSV files of sales; returns the totals per region computed here.
fn sales_input(dir: &Path, files: u32, rows: u32) -> (PathBuf, Totals) {
    let input = dir.join("sales");
    std::fs::create_dir_all(&input).unwrap();
    let mut rng = Rng::new(7);
    let mut totals = Totals::new();
    for f in 0..files {
        let mut text = String::from("region,product,quantity,price\n");
        for _ in 0..rows {
            let region = REGIONS[rng.range(0, 4) as usize];
            let q = rng.range(1, 20) as i64;
            let price = rng.range(100, 99_999) as f64 / 100.0;
            text.push_str(&format!("{region},p{},{q},{price}\n", rng.range(0, 50)));
            let t = totals.entry(region.to_string()).or_default();
            t.0 += 1;
            t.1 += q;
            t.2 += q as f64 * price;
        }
        std::fs::write(input.join(format!("sales-{f}.csv")), text).unwrap();
    }
    (input, totals)
}

fn read_totals(dir: &Path) -> Totals {
    let mut out = Totals::new();
    for b in read_parquet(dir) {
        let (r, s, u, v) = (
            col::<StringArray>(&b, "region"),
            col::<UInt64Array>(&b, "sales"),
            col::<Int64Array>(&b, "units"),
            col::<Float64Array>(&b, "revenue"),
        );
        for i in 0..b.num_rows() {
            let prev = out.insert(r.value(i).to_string(), (s.value(i), u.value(i), v.value(i)));
            assert!(prev.is_none(), "region {} twice", r.value(i));
        }
    }
    out
}

fn assert_totals(got: &Totals, want: &Totals) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        let g = got[k];
        assert_eq!((g.0, g.1), (w.0, w.1), "{k}");
        assert!(close(g.2, w.2), "{k}: revenue {} vs {}", g.2, w.2);
    }
}

#[test]
fn sales_csv_to_parquet_and_back_match_totals_computed_here() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, want) = sales_input(tmp.path(), 3, 4000);
    // Small splits: several per file, most not starting at the header.
    let split = "files.max_partition_bytes=32k";
    let out = tmp.path().join("totals");
    run_example(
        flint_udfs::SALES,
        &[split],
        &[Path::new("csv"), &input, &out],
    );
    assert_totals(&read_totals(&out), &want);
    assert!(out.join("_SUCCESS").exists());

    // CSV → Parquet (one part file per input split), then the same job on Parquet.
    let pq = tmp.path().join("sales-parquet");
    run_example(
        flint_udfs::SALES,
        &[split],
        &[Path::new("convert"), &input, &pq],
    );
    let rows: usize = read_parquet(&pq).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 12_000);
    let out2 = tmp.path().join("totals-from-parquet");
    run_example(flint_udfs::SALES, &[], &[Path::new("parquet"), &pq, &out2]);
    assert_totals(&read_totals(&out2), &want);
}

#[test]
fn a_malformed_csv_record_fails_naming_file_and_line_or_is_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("sales.csv");
    let mut text = String::from("region,product,quantity,price\n");
    for i in 0..50 {
        if i == 30 {
            text.push_str("north,p1,many,2.5\n"); // line 32: quantity is not a number
        } else {
            text.push_str("north,p1,2,1.5\n");
        }
    }
    std::fs::write(&input, text).unwrap();
    let out = tmp.path().join("out");
    let err = run_err(
        flint()
            .args(["run", flint_udfs::SALES, "--executors", "1", "--"])
            .arg("csv")
            .arg(&input)
            .arg(&out),
    );
    assert!(
        err.contains("sales.csv:32: malformed CSV record"),
        "the error names file and line: {err}"
    );
    assert!(!out.exists(), "a failed job leaves no output");

    let summary = tmp.path().join("summary.json");
    run_ok(
        flint()
            .args([
                "run",
                flint_udfs::SALES,
                "--executors",
                "1",
                "--summary-json",
            ])
            .arg(&summary)
            .arg("--")
            .arg("csv")
            .arg(&input)
            .arg(&out)
            .arg("drop"),
    );
    let totals = read_totals(&out);
    assert_eq!(totals["north"].0, 49, "the bad record is dropped");
    let s = read_summary(&summary);
    let dropped: u64 = s["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metrics"]["dropped_records"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 1, "{s:#}");
}

#[test]
fn join_of_orders_and_customers_matches_a_join_computed_here() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let countries = ["de", "fr", "jp", "br"];
    let mut customers = String::from("customer_id,name,country\n");
    let mut country_of = HashMap::new();
    for id in 0..100u64 {
        let c = countries[rng.range(0, 3) as usize];
        customers.push_str(&format!("{id},name{id},{c}\n"));
        country_of.insert(id, c);
    }
    let mut orders = String::from("order_id,customer_id,amount\n");
    let mut want: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for o in 0..3000u64 {
        let cust = rng.range(0, 119); // ids 100..119 have no customer row
        let amount = rng.range(1, 100_000) as f64 / 100.0;
        orders.push_str(&format!("{o},{cust},{amount}\n"));
        let country = country_of.get(&cust).map_or("unknown", |c| c).to_string();
        let e = want.entry(country).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    let (o, c) = (
        tmp.path().join("orders.csv"),
        tmp.path().join("customers.csv"),
    );
    std::fs::write(&o, orders).unwrap();
    std::fs::write(&c, customers).unwrap();
    // The customers (2 KB) are far below join.broadcast_threshold: by default the join
    // runs in the orders' tasks against the whole customer side (a broadcast hash join);
    // at threshold 0 both sides are shuffled. Both must give the join computed here.
    for (threshold, broadcast) in [("10m", true), ("0", false)] {
        let out = tmp.path().join(format!("out-{threshold}"));
        let events = tmp.path().join(format!("events-{threshold}"));
        let run = run_ok(
            flint()
                .args(["run", flint_udfs::JOIN, "--executors", "2", "--event-log"])
                .arg(&events)
                .args(["--conf", "files.max_partition_bytes=16k"])
                .args(["--conf", "shuffle.partitions=3"])
                .args(["--conf", &format!("join.broadcast_threshold={threshold}")])
                .arg("--")
                .args([&o, &c, &out]),
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(
            stderr.contains("is a broadcast hash join"),
            broadcast,
            "threshold {threshold}: {stderr}"
        );
        if broadcast {
            // The orders' map stage was absorbed: the join stage has their 3+ tasks.
            assert!(
                stderr.contains("(absorbed into stage 2: broadcast hash join)"),
                "{stderr}"
            );
            // Each executor fetches the customers' side (stage 1's output) once for all
            // its join tasks.
            let (mut side, mut fetched) = (0u64, 0u64);
            for f in std::fs::read_dir(&events).unwrap() {
                for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
                    let e: serde_json::Value = serde_json::from_str(line).unwrap();
                    if e["event"] != "TaskEnded" {
                        continue;
                    }
                    let m = &e["metrics"];
                    match e["attempt"]["task"]["stage"]["index"].as_u64() {
                        Some(1) => side += m["shuffle_write_bytes"].as_u64().unwrap(),
                        Some(2) => {
                            fetched += m["shuffle_read_remote_bytes"].as_u64().unwrap()
                                + m["shuffle_read_local_bytes"].as_u64().unwrap()
                        }
                        _ => {}
                    }
                }
            }
            assert!(
                side > 0 && fetched <= 2 * side,
                "the join's tasks read {fetched} bytes of a {side}-byte side"
            );
        }
        check_join(&out, &want);
    }
}

/// The join example's output against revenue and orders per country computed here.
fn check_join(out: &Path, want: &BTreeMap<String, (u64, f64)>) {
    let mut got: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for p in parts(out) {
        assert!(p.to_string_lossy().ends_with(".csv"), "{p:?}");
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("country,orders,revenue"));
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            got.insert(
                f[0].to_string(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            );
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got.contains_key("unknown"), "the outer side is kept");
    for (k, w) in want {
        assert_eq!(got[k].0, w.0, "{k}");
        assert!(close(got[k].1, w.1), "{k}: {} vs {}", got[k].1, w.1);
    }
}

/// PageRank as Spark's example computes it, here in plain Rust.
fn pagerank(links: &[(String, String)], iterations: u32) -> BTreeMap<String, f64> {
    let mut adj: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in links {
        adj.entry(a.clone()).or_default().insert(b.clone());
    }
    let mut ranks: BTreeMap<String, f64> = adj.keys().map(|k| (k.clone(), 1.0)).collect();
    for _ in 0..iterations {
        let mut contribs: BTreeMap<String, f64> = BTreeMap::new();
        for (src, dsts) in &adj {
            if let Some(r) = ranks.get(src) {
                for d in dsts {
                    *contribs.entry(d.clone()).or_default() += r / dsts.len() as f64;
                }
            }
        }
        ranks = contribs
            .into_iter()
            .map(|(k, c)| (k, 0.15 + 0.85 * c))
            .collect();
    }
    ranks
}

#[test]
fn pagerank_over_ten_iterations_matches_a_reference_implementation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let mut links = Vec::new();
    let mut text = String::new();
    for _ in 0..400 {
        let (a, b) = (
            format!("p{}", rng.range(0, 59)),
            format!("p{}", rng.range(0, 59)),
        );
        text.push_str(&format!("{a} {b}\n"));
        links.push((a, b));
    }
    text.push_str(&text.clone()); // duplicate links count once
    let input = tmp.path().join("links.txt");
    std::fs::write(&input, text).unwrap();
    let out = tmp.path().join("ranks");
    run_example(
        flint_udfs::PAGERANK,
        &["files.max_partition_bytes=4k"],
        &[&input, &out, Path::new("10")],
    );
    let want = pagerank(&links, 10);
    let mut got = BTreeMap::new();
    for p in parts(&out) {
        for l in std::fs::read_to_string(p).unwrap().lines() {
            let (k, v) = l.split_once('\t').unwrap();
            got.insert(k.to_string(), v.parse::<f64>().unwrap());
        }
    }
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        assert!((got[k] - w).abs() < 1e-9, "{k}: {} vs {w}", got[k]);
    }
}

#[test]
fn kmeans_matches_lloyds_algorithm_computed_here() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let centers = [(0.0, 0.0), (10.0, 10.0), (-10.0, 8.0)];
    let mut points = Vec::new();
    let mut text = String::from("x,y\n");
    for i in 0..900 {
        let (cx, cy) = centers[i % 3];
        let x = cx + rng.range(0, 4000) as f64 / 1000.0 - 2.0;
        let y = cy + rng.range(0, 4000) as f64 / 1000.0 - 2.0;
        text.push_str(&format!("{x},{y}\n"));
        points.push((x, y));
    }
    let input = tmp.path().join("points.csv");
    std::fs::write(&input, text).unwrap();
    let out = tmp.path().join("centroids");
    run_example(
        flint_udfs::KMEANS,
        &["files.max_partition_bytes=4k"],
        &[&input, Path::new("3"), Path::new("10"), &out],
    );
    // Lloyd's algorithm from the first 3 points.
    let mut c: Vec<(f64, f64)> = points[..3].to_vec();
    for _ in 0..10 {
        let mut sums = vec![(0.0, 0.0, 0u64); c.len()];
        for p in &points {
            let mut best = (0, f64::INFINITY);
            for (i, q) in c.iter().enumerate() {
                let d = (q.0 - p.0).powi(2) + (q.1 - p.1).powi(2);
                if d < best.1 {
                    best = (i, d);
                }
            }
            let s = &mut sums[best.0];
            s.0 += p.0;
            s.1 += p.1;
            s.2 += 1;
        }
        for (i, s) in sums.iter().enumerate() {
            if s.2 > 0 {
                c[i] = (s.0 / s.2 as f64, s.1 / s.2 as f64);
            }
        }
    }
    let text = std::fs::read_to_string(parts(&out)[0].clone()).unwrap();
    let got: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let (x, y) = l.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&c) {
        assert!(close(g.0, w.0) && close(g.1, w.1), "{g:?} vs {w:?}");
    }
}

#[test]
fn topk_sorts_globally_across_part_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = crate::cluster::seeded_input(tmp.path(), 9, 3, 400, 300);
    let out = tmp.path().join("sorted");
    let o = run_example(
        flint_udfs::TOPK,
        &["shuffle.partitions=4", "files.max_partition_bytes=8k"],
        &[&input, Path::new("5"), &out],
    );
    let counts = count_words(&input);
    let mut want: Vec<(String, u64)> = counts.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let files = parts(&out);
    assert_eq!(files.len(), 4);
    let mut got = Vec::new();
    for p in files {
        for l in std::fs::read_to_string(p).unwrap().lines() {
            let (w, n) = l.split_once('\t').unwrap();
            got.push((w.to_string(), n.parse::<u64>().unwrap()));
        }
    }
    assert_eq!(got, want, "part files concatenated are in order");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let top: Vec<String> = want[..5].iter().map(|(w, n)| format!("{w}\t{n}")).collect();
    assert!(stdout.contains(&top.join("\n")), "top 5 printed: {stdout}");
}

#[test]
fn flint_new_makes_a_job_crate_that_builds_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-job");
    run_ok(flint().arg("new").arg(&dir));
    for f in ["Cargo.toml", "src/lib.rs", ".gitignore"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let again = run_err(flint().arg("new").arg(&dir));
    assert!(again.contains("already exists"), "{again}");
    let bad = run_err(flint().arg("new").arg(tmp.path().join("1 bad")));
    assert!(bad.contains("is not a crate name"), "{bad}");

    // Build it against this workspace's lock file and guest target directory, so the
    // dependencies the guests already compiled are reused.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let target = Path::new(flint_udfs::WORDCOUNT)
        .ancestors()
        .nth(4)
        .unwrap()
        .to_path_buf();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "The cat the DOG\ndog the\n").unwrap();
    let out = tmp.path().join("out");
    run_ok(
        flint()
            .env("CARGO_TARGET_DIR", &target)
            .args(["run"])
            .arg(&dir)
            .args(["--executors", "1", "--"])
            .arg(&input)
            .arg(&out),
    );
    let counts = crate::util::read_output(&out);
    let want: HashMap<String, u64> = [("the", 3), ("cat", 1), ("dog", 2)]
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
    assert_eq!(counts, want);
}

#[test]
fn every_operator_and_format_matches_values_computed_here() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_ok(
        flint()
            .args(["run", flint_udfs::TEST_JOBS, "--executors", "2", "--"])
            .arg("operators")
            .arg(tmp.path()),
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let got: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(": ")).collect();
    let xs: Vec<i64> = (0..1000).collect();
    let sum: i64 = xs.iter().sum();
    let mut want: Vec<(&str, String)> = vec![
        ("count", "1000".into()),
        ("reduce", format!("Some({sum})")),
        ("fold", sum.to_string()),
        (
            "filter_with",
            xs.iter().filter(|x| **x >= 900).count().to_string(),
        ),
        ("map_with", "[0, 3, 6]".into()),
        ("union", "1003".into()),
        // range: 4 partitions of 250; parallelize([5, 6, 7], 2): 1 and 2 rows. Six
        // pieces coalesced into 2 tasks of 3 consecutive pieces each.
        ("coalesce", "[253, 750]".into()),
        ("distinct", "37".into()),
        ("take", "[0, 1, 2]".into()),
        ("first", "Some(0)".into()),
        ("top", "[999, 998, 997]".into()),
        ("count_by_value", "[(0, 334), (1, 333), (2, 333)]".into()),
        ("count_by_key", "[(0, 500), (1, 500)]".into()),
        ("repartition", "[200, 200, 200, 200, 200]".into()),
        ("with_partitions", "4".into()),
        ("flat_map_with", "2000".into()),
        ("right_outer_join", "20".into()),
    ];
    let mut sorted: Vec<i64> = xs.iter().map(|x| (x * 7919) % 1000).collect();
    sorted.sort_by(|a, b| b.cmp(a));
    want.push((
        "sort_desc",
        sorted
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ));
    let agg: Vec<String> = (0..10)
        .map(|k| {
            let s: i64 = xs.iter().filter(|x| *x % 10 == k).sum();
            format!("({k}, ({s}, 100))")
        })
        .collect();
    want.push(("aggregate_by_key", format!("[{}]", agg.join(", "))));
    let groups: Vec<String> = (0..10).map(|k| format!("({k}, 100)")).collect();
    want.push(("group_by_key", format!("[{}]", groups.join(", "))));
    let join: Vec<String> = (0..15)
        .map(|k| format!("({k}, ({}, \"v{k}\"))", k * 2))
        .collect();
    want.push(("join", format!("[{}]", join.join(", "))));
    // The right side's value for key k, as Debug prints an Option of it.
    let right_value = |k: i64| {
        if k < 15 {
            format!("Some(\"v{k}\")")
        } else {
            "None".into()
        }
    };
    let left: Vec<String> = (0..20)
        .map(|k| format!("({k}, ({}, {}))", k * 2, right_value(k)))
        .collect();
    want.push(("left_outer_join", format!("[{}]", left.join(", "))));
    let keys: Vec<String> = (0..20).map(|k| k.to_string()).collect();
    want.push(("full_outer_join", format!("[{}]", keys.join(", "))));
    let full: Vec<String> = (0..20)
        .map(|k| format!("({k}, ({}, Some({})))", right_value(k), k * 2))
        .collect();
    want.push(("full_outer_join_values", format!("[{}]", full.join(", "))));
    let cog: Vec<String> = (0..20)
        .map(|k| format!("({k}, 1, {})", if k < 15 { 1 } else { 0 }))
        .collect();
    want.push(("cogroup", format!("[{}]", cog.join(", "))));
    let scores: f64 = xs.iter().map(|x| *x as f64 / 2.0).sum();
    for f in ["json_lines", "arrow_ipc", "csv", "csv_inferred", "parquet"] {
        want.push((f, format!("(1000, {sum}, {scores:?})")));
    }
    for (k, v) in &want {
        assert_eq!(
            got.get(k).copied(),
            Some(v.as_str()),
            "{k}; all output:\n{stdout}"
        );
    }
    // A sample: the same seed gives the same rows; about a tenth are kept.
    let s: Vec<u64> = got["sample"]
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(s[0], s[1]);
    assert!((50..150).contains(&s[0]), "{s:?}");
    // partition_by: 3 partitions, each key in exactly one, spread over more than one.
    let by_key = got["partition_by"];
    let sets: Vec<Vec<i64>> = by_key
        .trim_matches(|c| c == '[' || c == ']')
        .split("], [")
        .map(|p| {
            p.split(", ")
                .filter(|s| !s.is_empty())
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(sets.len(), 3, "{by_key}");
    let mut all: Vec<i64> = sets.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "{by_key}");
    assert!(
        sets.iter().filter(|s| !s.is_empty()).count() > 1,
        "keys spread: {by_key}"
    );
    // The saved files are there, with the formats' extensions.
    for (d, ext) in [
        ("json", "jsonl"),
        ("arrow", "arrow"),
        ("csv", "csv"),
        ("parquet", "parquet"),
    ] {
        let files = parts(&tmp.path().join(d));
        assert!(
            !files.is_empty() && files.iter().all(|p| p.extension().unwrap() == ext),
            "{d}: {files:?}"
        );
    }
}

/// Runs the `cache` test job; returns its output and the lines it read from the file.
fn cached_run(input: &Path, level: &str, conf: &[&str]) -> (String, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let summary = tmp.path().join("summary.json");
    let mut cmd = flint();
    cmd.args([
        "run",
        flint_udfs::TEST_JOBS,
        "--executors",
        "2",
        "--summary-json",
    ])
    .arg(&summary)
    .args(["--conf", "files.max_partition_bytes=4k"]);
    for c in conf {
        cmd.args(["--conf", c]);
    }
    let o = run_ok(cmd.arg("--").arg("cache").arg(input).arg(level));
    let s = read_summary(&summary);
    let read: u64 = s["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metrics"]["input_records"].as_u64().unwrap())
        .sum();
    (String::from_utf8_lossy(&o.stdout).into_owned(), read)
}

#[test]
fn persisted_partitions_are_read_back_instead_of_recomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("lines.txt");
    let mut text = String::new();
    let mut total = 0u64;
    for i in 0..3000u64 {
        let line = "x".repeat((i % 17) as usize);
        total += line.len() as u64;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&input, &text).unwrap();
    let want = format!("cached: 3000 {total} 3000\nafter unpersist: 3000");
    // The file is read by the first action and, after unpersist, by the last: twice.
    for level in ["memory", "memory-and-disk", "disk"] {
        let (out, read) = cached_run(&input, level, &[]);
        assert!(out.contains(&want), "{level}: {out}");
        assert_eq!(
            read, 6000,
            "{level}: three actions read the kept partitions"
        );
    }
    // An executor's memory too small for one partition (the cache tier has what tasks do
    // not hold, here nothing): memory-and-disk spills to disk and still reads the file
    // twice; memory-only drops evicted partitions, which the next actions recompute from
    // lineage, so the file is read more often, with the same results.
    let tiny = ["executor.memory=1"];
    let (out, read) = cached_run(&input, "memory-and-disk", &tiny);
    assert!(out.contains(&want), "{out}");
    assert_eq!(read, 6000, "spilled partitions are still kept");
    let (out, read) = cached_run(&input, "memory", &tiny);
    assert!(out.contains(&want), "{out}");
    assert!(
        read > 6000,
        "evicted memory-only partitions were recomputed: {read}"
    );
}

#[test]
fn accumulators_count_each_successful_task_once_and_broadcasts_travel_once_per_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("numbers.txt");
    let (mut text, mut sum, mut bad) = (String::new(), 0i64, 0u64);
    for i in 0..4000i64 {
        let line = match i % 13 {
            0 => {
                bad += 1;
                format!("oops{i}")
            }
            1 => "skip".to_string(),
            _ => {
                sum += i;
                i.to_string()
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let summary = tmp.path().join("summary.json");
    let o = run_ok(
        flint()
            .args([
                "run",
                flint_udfs::TEST_JOBS,
                "--executors",
                "2",
                "--summary-json",
            ])
            .arg(&summary)
            .args(["--conf", "files.max_partition_bytes=4k", "--"])
            .arg("accumulate")
            .arg(&input),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("sum: {sum}, bad: {bad}, seen: 4000")),
        "the failed first attempt's additions do not count: {stdout}"
    );
    let s = read_summary(&summary);
    assert_eq!(s["failed_tasks"], 1, "partition 1 failed once: {s:#}");
    assert!(s["tasks"].as_u64().unwrap() > 4, "{s:#}");
    let fetches = s["broadcast_fetches"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&fetches),
        "the stop list went to each of 2 executors at most once: {fetches}"
    );
}

/// `take` reads partitions in rounds (1, then up to 4× as many as were read, fewer when
/// the rows found say so), each round a job, and stops when it has enough rows. The
/// dataset is `range(0, 1000, 10)`: partition p holds 100p..100p+99.
#[test]
fn take_reads_partitions_in_rounds_as_spark_does() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |case: &str| {
        let summary = tmp.path().join(format!("{case}.json"));
        let o = run_ok(
            flint()
                .args(["run", flint_udfs::TEST_JOBS, "--executors", "2"])
                .arg("--summary-json")
                .arg(&summary)
                .args(["--", "take", case]),
        );
        let s = read_summary(&summary);
        let line = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("took "))
            .unwrap_or_else(|| panic!("{case}: no result line"))
            .to_string();
        (
            line,
            s["jobs"].as_u64().unwrap(),
            s["tasks"].as_u64().unwrap(),
        )
    };
    let took = |rows: Vec<i64>| format!("took {} rows: {:?}", rows.len(), rows);

    // first(): one job of one task, however many partitions there are.
    assert_eq!(run("first"), (took(vec![0]), 1, 1));
    // Rows only in the last partition: rounds of 1, 4 and the remaining 5 partitions.
    assert_eq!(run("late"), (took((950..955).collect()), 3, 10));
    // Multiples of 40: 3 in partition 0, so 1.5 × 10 / 3 → 5 partitions suffice: a
    // second round of 4.
    let multiples: Vec<i64> = (0..1000).filter(|x| x % 40 == 0).take(10).collect();
    assert_eq!(run("sparse"), (took(multiples), 2, 5));
    // More rows wanted than exist: every partition, in rounds of 1, 4 and 5.
    let (line, jobs, tasks) = run("all");
    assert!(line.starts_with("took 1000 rows: [0, 1, 2,"), "{line}");
    assert_eq!((jobs, tasks), (3, 10));
    // After a shuffle that is not cached, rounds would rerun the map stage: one job
    // reads every partition (10 map tasks; the 10 small reduce partitions are read by
    // one task, as adaptive execution coalesces them).
    let (line, jobs, tasks) = run("shuffled");
    assert!(line.starts_with("took 2 rows"), "{line}");
    assert_eq!((jobs, tasks), (1, 11));
}

/// Spark keeps a job's shuffle files for later jobs of the application: the second and
/// third actions on a shuffled dataset read its kept map output instead of running the
/// map stage again, and the output goes once the program drops the dataset.
#[test]
fn later_jobs_of_an_application_reuse_a_shuffle_s_kept_map_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut words = std::collections::BTreeSet::new();
    for f in 0..4 {
        let line: Vec<String> = (0..50).map(|i| format!("w{}", (i * 7 + f) % 60)).collect();
        words.extend(line.iter().cloned());
        std::fs::write(input.join(format!("f{f}.txt")), line.join(" ") + "\n").unwrap();
    }
    let events = tmp.path().join("events");
    let out = run_ok(
        flint()
            .args([
                "run",
                flint_udfs::TEST_JOBS,
                "--executors",
                "2",
                "--event-log",
            ])
            .arg(&events)
            .args(["--", "reused-shuffle"])
            .arg(&input),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "reused-shuffle: distinct={} collected={} took=2",
            words.len(),
            words.len()
        )),
        "{stdout}"
    );
    // Map tasks (stage 0 of each job) ran in the first job only.
    let mut map_tasks: BTreeMap<u64, u64> = BTreeMap::new();
    for f in std::fs::read_dir(&events).unwrap() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            if e["event"] == "TaskEnded" && e["attempt"]["task"]["stage"]["index"] == 0 {
                let job = e["attempt"]["task"]["stage"]["job"].as_u64().unwrap();
                *map_tasks.entry(job).or_default() += 1;
            }
        }
    }
    assert_eq!(
        map_tasks.values().copied().collect::<Vec<_>>(),
        vec![4],
        "only the first job ran the map stage: {map_tasks:?}"
    );
}

/// A join whose one key holds most rows: adaptive execution reads that partition with
/// several tasks, each with a share of the large side's map outputs and the other side
/// whole (Spark's skew join), and the join is what it would be otherwise.
#[test]
fn a_frame_join_matches_one_computed_here_broadcast_or_shuffled() {
    let (l, r) = (20_000i64, 3_000i64);
    // Left row x has key x % 100 (none when 7 divides x), right row j key j % 50; the
    // job computes a * b + 1 per joined pair and groups by key.
    let mut want = String::new();
    for k in 0..50 {
        let xs: Vec<i64> = (0..l).filter(|x| x % 7 != 0 && x % 100 == k).collect();
        let js: Vec<i64> = (0..r).filter(|j| j % 50 == k).collect();
        let n = (xs.len() * js.len()) as i64;
        let sum = xs.iter().sum::<i64>() * js.iter().sum::<i64>() + n;
        let max_b = js.iter().max().unwrap();
        want += &format!("frame-join: key={k} n={n} sum={sum} max_b={max_b}\n");
    }
    let tmp = tempfile::tempdir().unwrap();
    for key in ["k", "name"] {
        for (i, shuffled) in [false, true].into_iter().enumerate() {
            let dir = tmp.path().join(format!("{key}-{i}"));
            let threshold = if shuffled { "0" } else { "10m" };
            let out = run_ok(
                flint()
                    .args(["run", flint_udfs::TEST_JOBS, "--executors", "2"])
                    .args(["--conf", &format!("join.broadcast_threshold={threshold}")])
                    .args(["--conf", "shuffle.partitions=3"])
                    .args(["--", "frame-join", &l.to_string(), &r.to_string(), key])
                    .arg(&dir),
            );
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            let got: String = stdout
                .lines()
                .filter(|l| l.starts_with("frame-join:"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(got, want, "key {key}, shuffled {shuffled}");
            assert_eq!(
                stderr.contains("broadcast hash join"),
                !shuffled,
                "key {key}, shuffled {shuffled}: {stderr}"
            );
        }
    }
}

#[test]
fn a_skewed_join_partition_is_read_by_several_tasks_with_the_same_result() {
    let n: i64 = 200_000;
    let (mut rows, mut sum) = (0u64, 0i64);
    for x in 0..n {
        let k = if x % 5 != 0 { 0 } else { x % 100 };
        rows += 1;
        sum += x + 10 * k;
    }
    let want = format!("skewed-join: rows={rows} sum={sum}");
    for (skew, split) in [("1k", true), ("1g", false)] {
        let out = run_ok(
            flint()
                .args(["run", flint_udfs::TEST_JOBS, "--executors", "2"])
                .args(["--conf", "join.broadcast_threshold=0"])
                .args(["--conf", "shuffle.partitions=4"])
                .args(["--conf", &format!("adaptive.skew.min_bytes={skew}")])
                .args(["--", "skewed-join", &n.to_string()]),
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(stdout.contains(&want), "{stdout}");
        assert_eq!(
            stderr.contains("skewed partition"),
            split,
            "min_bytes {skew}: {stderr}"
        );
    }
}
