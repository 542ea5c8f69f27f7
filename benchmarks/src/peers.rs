//! `--suite peers`: the peers' jobs (`../shared/peers`: word count, aggregation by key and
//! by category, a join then an aggregation) on the data their scripts generate, run by
//! Flint, by a hand-written native Rust program, and by DuckDB and Polars where the
//! peers' Python environment has them; every result cross-checked, ratios printed.
//!
//! Each engine is timed two ways: the job alone in a warm process (Flint: submit to
//! result on a running local cluster with the component compiled; DuckDB and Polars:
//! the query in their process, as their scripts report it; native: the whole count), and
//! the command a user runs, as a process (`flint run` and `python …_jobs.py`). Rounds
//! alternate the engines' order; medians are reported.

use crate::{Args, load_average, local_cluster, run_job};
use anyhow::{Context as _, bail};
use flint_protocol::conf::Conf;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The jobs, as the peers name them.
const JOBS: [&str; 4] = ["wc", "aggkey", "aggcat", "join"];

/// One cell of a result row, typed as the peers' checksum formats it.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum Cell {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Cell {
    /// Python's `str(int)` / `repr(float)` / `str`, as `common.py` formats checksums.
    fn python(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => python_repr(*f),
            Cell::Text(s) => s.clone(),
        }
    }
}

/// Python's `repr` of a float: the shortest text that reads back to it, in fixed
/// notation when the exponent is in [-4, 16), else `d.ddde+XX`.
fn python_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // shortest digits: "1.5e16", "-3e-5"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Column kinds of each job's result rows.
fn kinds(job: &str) -> &'static [char] {
    match job {
        "wc" => &['s', 'i'],
        "aggkey" => &['i', 'f', 'i'],
        "aggcat" => &['s', 'f'],
        "join" => &['s', 'i', 'f', 'f'],
        _ => &[],
    }
}

fn parse_row(job: &str, line: &str) -> anyhow::Result<Vec<Cell>> {
    let kinds = kinds(job);
    // A word holds no tab: split from the right for the numbers.
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != kinds.len() {
        bail!("{job}: expected {} fields in {line:?}", kinds.len());
    }
    fields
        .iter()
        .zip(kinds)
        .map(|(f, k)| {
            Ok(match k {
                'i' => Cell::Int(f.parse().with_context(|| format!("{job}: {f:?}"))?),
                'f' => Cell::Float(f.parse().with_context(|| format!("{job}: {f:?}"))?),
                _ => Cell::Text(f.to_string()),
            })
        })
        .collect()
}

/// The peers' canonical checksum: sha256 over the rows sorted by their first field,
/// tab-separated and formatted as Python does, first 16 hex digits.
fn checksum(rows: &[Vec<Cell>]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&Vec<Cell>> = rows.iter().collect();
    sorted.sort_by(|a, b| a[0].partial_cmp(&b[0]).unwrap_or(std::cmp::Ordering::Equal));
    let mut h = Sha256::new();
    for r in sorted {
        let line: Vec<String> = r.iter().map(Cell::python).collect();
        h.update(line.join("\t").as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

/// Result rows of a Flint job: the `part-*` files of `dir`.
fn read_parts(job: &str, dir: &Path) -> anyhow::Result<Vec<Vec<Cell>>> {
    let mut rows = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for p in files {
        if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&p)?.lines() {
            rows.push(parse_row(job, line)?);
        }
    }
    Ok(rows)
}

/// Rows keyed by their first field, for a row-by-row comparison.
fn keyed(rows: &[Vec<Cell>]) -> BTreeMap<String, &[Cell]> {
    rows.iter().map(|r| (r[0].python(), &r[1..])).collect()
}

/// Where the peers' folder, data and Python are.
struct Peers {
    dir: PathBuf,
    data: PathBuf,
    python: Option<PathBuf>,
}

impl Peers {
    fn find(args: &Args) -> anyhow::Result<Peers> {
        let dir = match &args.peers {
            Some(d) => d.clone(),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join("peers"))
                .context("no --peers and no HOME")?,
        };
        let data = std::env::var_os("PEERS_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("peers-data"));
        for f in ["corpus.txt", "facts.parquet", "dim.parquet"] {
            if !data.join(f).is_file() {
                bail!(
                    "{} is missing: copy ../shared/peers to {} and run its scripts/setup.sh and scripts/gen_data.sh (see its README), or pass --peers DIR",
                    data.join(f).display(),
                    dir.display()
                );
            }
        }
        let venv = dir.join("venv/bin/python");
        let python = [venv, PathBuf::from("python3")].into_iter().find(|p| {
            Command::new(p)
                .args(["-c", "import duckdb, polars"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Ok(Peers { dir, data, python })
    }

    fn path(&self, f: &str) -> String {
        self.data.join(f).display().to_string()
    }

    /// `(job seconds in the process, process wall seconds, checksum)` of `engine`
    /// running `job` with the peers' own script.
    fn run(&self, engine: &str, job: &str) -> anyhow::Result<(f64, f64, String)> {
        let python = self
            .python
            .as_ref()
            .context("no Python with duckdb and polars")?;
        let script = self.dir.join("scripts").join(format!("{engine}_jobs.py"));
        let t = Instant::now();
        let out = Command::new(python)
            .arg(&script)
            .arg(job)
            .env("PEERS_DATA", &self.data)
            .env(
                "PEERS_OUT",
                std::env::temp_dir().join("flint-bench-peers-out"),
            )
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let wall = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "{engine} {job} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .with_context(|| format!("{engine} {job} printed no RESULT line"))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        let job_s = v["job_s"][0].as_f64().context("job_s")?;
        let sum = v["checksum"].as_str().context("checksum")?.to_string();
        Ok((job_s, wall, sum))
    }
}

/// The arguments of the Flint job for `job`, writing to `out`.
fn flint_args(peers: &Peers, job: &str, out: &Path) -> (&'static str, Vec<String>) {
    let out = out.display().to_string();
    match job {
        "wc" => (flint_udfs::WORDCOUNT, vec![peers.path("corpus.txt"), out]),
        "join" => (
            flint_udfs::BENCH_JOBS,
            vec![
                "join".into(),
                peers.path("facts.parquet"),
                peers.path("dim.parquet"),
                out,
            ],
        ),
        other => (
            flint_udfs::BENCH_JOBS,
            vec![other.into(), peers.path("facts.parquet"), out],
        ),
    }
}

/// Times of one engine on one job, over the rounds.
#[derive(Default)]
struct Times {
    job: Vec<f64>,
    wall: Vec<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

pub fn suite(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let peers = Peers::find(args)?;
    let jobs: Vec<&str> = match &args.jobs {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => JOBS.to_vec(),
    };
    for j in &jobs {
        if !JOBS.contains(j) {
            bail!("unknown peers job {j}: one of {JOBS:?}");
        }
    }
    let reference = |job: &str| -> anyhow::Result<Option<Vec<Vec<Cell>>>> {
        let p = peers.dir.join("reference").join(format!("{job}.tsv"));
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p)?;
        Ok(Some(
            text.lines()
                .map(|l| parse_row(job, l))
                .collect::<anyhow::Result<_>>()?,
        ))
    };
    let slots = (args.executors * args.cores) as usize;
    let engines: Vec<&str> = if peers.python.is_some() {
        vec!["flint", "native", "duckdb", "polars"]
    } else {
        println!("(no Python with duckdb and polars found: Flint and native only)");
        vec!["flint", "native"]
    };
    println!(
        "peers data: {} ({} MB corpus, {} MB facts.parquet); {} executors x {} cores; load average {}",
        peers.data.display(),
        mb(&peers.data.join("corpus.txt")),
        mb(&peers.data.join("facts.parquet")),
        args.executors,
        args.cores,
        load_average()
    );
    // Warm the page cache for every reader alike.
    for f in ["corpus.txt", "facts.parquet", "dim.parquet"] {
        drop(std::fs::read(peers.data.join(f))?);
    }
    let cache = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let mut times: HashMap<(&str, &str), Times> = HashMap::new();
    let mut sums: HashMap<(&str, &str), String> = HashMap::new();
    rt.block_on(async {
        let cluster = local_cluster(args, Conf::default(), cache.path()).await?;
        // Compile both components first (into the cache `flint run` reads too).
        for w in [flint_udfs::WORDCOUNT, flint_udfs::BENCH_JOBS] {
            let _ = run_job(&cluster, &std::fs::read(w)?, vec![]).await;
        }
        for round in 0..args.rounds {
            for (i, job) in jobs.iter().enumerate() {
                // Rotate who goes first, round by round and job by job.
                let mut order = engines.clone();
                order.rotate_left((round as usize + i) % engines.len());
                for engine in order {
                    let t = times.entry((job, engine)).or_default();
                    match engine {
                        "flint" => {
                            let out = scratch.path().join(format!("{job}-{round}"));
                            let (wasm, a) = flint_args(&peers, job, &out);
                            let wasm = std::fs::read(wasm)?;
                            let s = Instant::now();
                            run_job(&cluster, &wasm, a).await?;
                            t.job.push(s.elapsed().as_secs_f64());
                            let rows = read_parts(job, &out)?;
                            sums.insert((job, "flint"), checksum(&rows));
                            if round == 0
                                && let Some(r) = reference(job)?
                            {
                                check_rows(job, &rows, &r)?;
                            }
                            std::fs::remove_dir_all(&out)?;
                            // The command a user runs, as a process.
                            let (_, a) = flint_args(&peers, job, &out);
                            t.wall.push(flint_run_wall(args, cache.path(), job, a)?);
                            std::fs::remove_dir_all(&out)?;
                        }
                        "native" => {
                            let s = Instant::now();
                            let rows = native(job, &peers, slots)?;
                            let e = s.elapsed().as_secs_f64();
                            t.job.push(e);
                            t.wall.push(e);
                            sums.insert((job, "native"), checksum(&rows));
                        }
                        peer => {
                            let (job_s, wall, sum) = peers.run(peer, job)?;
                            t.job.push(job_s);
                            t.wall.push(wall);
                            sums.insert((job, peer), sum);
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    println!(
        "\nmedians of {} round(s), seconds: job (in a warm process) / wall (the command as a process); load average now {}",
        args.rounds,
        load_average()
    );
    print!("{:<8}", "job");
    for e in &engines {
        print!(" | {e:>15}");
    }
    println!(" | flint/native | flint/duckdb job | flint/duckdb wall");
    for job in &jobs {
        print!("{job:<8}");
        let m = |e: &str| {
            let t = &times[&(*job, e)];
            (
                median(&t.job).unwrap_or(f64::NAN),
                median(&t.wall).unwrap_or(f64::NAN),
            )
        };
        for e in &engines {
            let (j, w) = m(e);
            print!(" | {j:>6.2} / {w:>6.2}");
        }
        let (fj, fw) = m("flint");
        let (nj, _) = m("native");
        print!(" | {:>11.2}x", fj / nj);
        if engines.contains(&"duckdb") {
            let (dj, dw) = m("duckdb");
            print!(" | {:>15.2}x | {:>16.2}x", fj / dj, fw / dw);
        }
        println!();
    }
    println!("\nchecksums (the peers' canonical form):");
    let mut all_agree = true;
    for job in &jobs {
        let mut line = format!("{job:<8}");
        let flint = &sums[&(*job, "flint")];
        for e in &engines {
            let s = &sums[&(*job, *e)];
            all_agree &= s == flint;
            line.push_str(&format!(" {e}={s}"));
        }
        println!("{line}");
    }
    if !all_agree {
        bail!("the engines' results differ (checksums above)");
    }
    println!("all engines agree on every job");
    Ok(())
}

/// Flint's rows against the reference rows, row by row (the sums are exact in any order).
fn check_rows(job: &str, got: &[Vec<Cell>], want: &[Vec<Cell>]) -> anyhow::Result<()> {
    let (g, w) = (keyed(got), keyed(want));
    if g.len() != w.len() {
        bail!(
            "{job}: flint gave {} rows, the reference has {}",
            g.len(),
            w.len()
        );
    }
    for (k, v) in &w {
        match g.get(k) {
            Some(x) if x == v => {}
            other => bail!("{job}: row {k}: flint gave {other:?}, the reference has {v:?}"),
        }
    }
    Ok(())
}

/// Seconds `flint run` takes for `job` as a process (this binary re-executed as `flint`).
fn flint_run_wall(
    args: &Args,
    cache: &Path,
    job: &str,
    job_args: Vec<String>,
) -> anyhow::Result<f64> {
    let (wasm, _) = match job {
        "wc" => (flint_udfs::WORDCOUNT, ()),
        _ => (flint_udfs::BENCH_JOBS, ()),
    };
    let t = Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .env(crate::AS_FLINT, "1")
        .env("FLINT_CACHE_DIR", cache)
        .env("RUST_LOG", "error")
        .args(["run", wasm, "--executors"])
        .arg(args.executors.to_string())
        .arg("--cores")
        .arg(args.cores.to_string())
        .arg("--")
        .args(job_args)
        .output()?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "flint run {job} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(s)
}

fn mb(p: &Path) -> u64 {
    p.metadata().map(|m| m.len() / 1_000_000).unwrap_or(0)
}

/// The native baselines: the same jobs by hand, `threads` threads, std's `HashMap`.
fn native(job: &str, peers: &Peers, threads: usize) -> anyhow::Result<Vec<Vec<Cell>>> {
    match job {
        "wc" => {
            let counts = crate::native_wordcount(&peers.data.join("corpus.txt"), threads)?;
            Ok(counts
                .into_iter()
                .map(|(w, n)| vec![Cell::Text(w), Cell::Int(n as i64)])
                .collect())
        }
        "aggkey" => {
            let parts = row_groups(
                &peers.data.join("facts.parquet"),
                threads,
                &["key", "amount"],
                |b, m: &mut HashMap<i64, (f64, i64)>| {
                    let (k, a) = (i64s(b, "key")?, f64s(b, "amount")?);
                    for i in 0..b.num_rows() {
                        let e = m.entry(k.value(i)).or_default();
                        e.0 += a.value(i);
                        e.1 += 1;
                    }
                    Ok(())
                },
            )?;
            let mut total: HashMap<i64, (f64, i64)> = HashMap::new();
            for p in parts {
                for (k, (s, n)) in p {
                    let e = total.entry(k).or_default();
                    e.0 += s;
                    e.1 += n;
                }
            }
            Ok(total
                .into_iter()
                .map(|(k, (s, n))| vec![Cell::Int(k), Cell::Float(s), Cell::Int(n)])
                .collect())
        }
        "aggcat" => {
            let parts = row_groups(
                &peers.data.join("facts.parquet"),
                threads,
                &["category", "amount"],
                |b, m: &mut HashMap<String, f64>| {
                    let (c, a) = (strs(b, "category")?, f64s(b, "amount")?);
                    for i in 0..b.num_rows() {
                        let c = c.value(i);
                        match m.get_mut(c) {
                            Some(s) => *s += a.value(i),
                            None => {
                                m.insert(c.to_string(), a.value(i));
                            }
                        }
                    }
                    Ok(())
                },
            )?;
            let mut total: HashMap<String, f64> = HashMap::new();
            for p in parts {
                for (k, s) in p {
                    *total.entry(k).or_default() += s;
                }
            }
            Ok(total
                .into_iter()
                .map(|(k, s)| vec![Cell::Text(k), Cell::Float(s)])
                .collect())
        }
        "join" => {
            // The dimension into a hash map, then the facts streamed against it.
            let mut regions: Vec<String> = Vec::new();
            let mut dim: HashMap<i64, (usize, i64)> = HashMap::new();
            let dims = row_groups(
                &peers.data.join("dim.parquet"),
                1,
                &["key", "region", "weight"],
                |b, m: &mut Vec<(i64, String, i64)>| {
                    let (k, r, w) = (i64s(b, "key")?, strs(b, "region")?, i64s(b, "weight")?);
                    for i in 0..b.num_rows() {
                        m.push((k.value(i), r.value(i).to_string(), w.value(i)));
                    }
                    Ok(())
                },
            )?;
            for (k, r, w) in dims.into_iter().flatten() {
                let idx = match regions.iter().position(|x| *x == r) {
                    Some(i) => i,
                    None => {
                        regions.push(r);
                        regions.len() - 1
                    }
                };
                dim.insert(k, (idx, w));
            }
            let dim = &dim;
            let parts = row_groups(
                &peers.data.join("facts.parquet"),
                threads,
                &["key", "amount"],
                |b, m: &mut HashMap<usize, (i64, f64, f64)>| {
                    let (k, a) = (i64s(b, "key")?, f64s(b, "amount")?);
                    for i in 0..b.num_rows() {
                        if let Some((r, w)) = dim.get(&k.value(i)) {
                            let e = m.entry(*r).or_default();
                            e.0 += 1;
                            e.1 += a.value(i);
                            e.2 += a.value(i) * *w as f64;
                        }
                    }
                    Ok(())
                },
            )?;
            let mut total: HashMap<usize, (i64, f64, f64)> = HashMap::new();
            for p in parts {
                for (r, (n, s, w)) in p {
                    let e = total.entry(r).or_default();
                    e.0 += n;
                    e.1 += s;
                    e.2 += w;
                }
            }
            Ok(total
                .into_iter()
                .map(|(r, (n, s, w))| {
                    vec![
                        Cell::Text(regions[r].clone()),
                        Cell::Int(n),
                        Cell::Float(s),
                        Cell::Float(w),
                    ]
                })
                .collect())
        }
        other => bail!("no native {other}"),
    }
}

/// Reads the row groups of `file` (columns `columns` only) in `threads` threads, each
/// folding its share into its own `S` with `each`.
fn row_groups<S: Default + Send>(
    file: &Path,
    threads: usize,
    columns: &[&str],
    each: impl Fn(&arrow_array::RecordBatch, &mut S) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Vec<S>> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let groups = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file)?)?
        .metadata()
        .num_row_groups();
    let each = &each;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.max(1))
            .map(|t| {
                s.spawn(move || {
                    let mut state = S::default();
                    let mine: Vec<usize> = (t..groups).step_by(threads.max(1)).collect();
                    if mine.is_empty() {
                        return anyhow::Ok(state);
                    }
                    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file)?)?;
                    let mask = ProjectionMask::columns(b.parquet_schema(), columns.iter().copied());
                    let r = b
                        .with_row_groups(mine)
                        .with_projection(mask)
                        .with_batch_size(64 * 1024)
                        .build()?;
                    for batch in r {
                        each(&batch?, &mut state)?;
                    }
                    anyhow::Ok(state)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a reading thread"))
            .collect()
    })
}

fn i64s<'a>(
    b: &'a arrow_array::RecordBatch,
    c: &str,
) -> anyhow::Result<&'a arrow_array::Int64Array> {
    b.column_by_name(c)
        .and_then(|a| a.as_any().downcast_ref())
        .with_context(|| format!("an int64 column {c}"))
}

fn f64s<'a>(
    b: &'a arrow_array::RecordBatch,
    c: &str,
) -> anyhow::Result<&'a arrow_array::Float64Array> {
    b.column_by_name(c)
        .and_then(|a| a.as_any().downcast_ref())
        .with_context(|| format!("a float64 column {c}"))
}

fn strs<'a>(
    b: &'a arrow_array::RecordBatch,
    c: &str,
) -> anyhow::Result<&'a arrow_array::StringArray> {
    b.column_by_name(c)
        .and_then(|a| a.as_any().downcast_ref())
        .with_context(|| format!("a string column {c}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_formatted_as_python_repr_does() {
        // Expected values are what CPython 3.11 prints for repr(x).
        for (x, want) in [
            (1038.71875, "1038.71875"),
            (13202.0, "13202.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_repr(x), want, "{x}");
        }
    }

    #[test]
    fn checksum_matches_the_peers_reference_formatting() {
        // sha256 of "a\t1.0\nb\t2\n"[..16 hex] as common.py computes it for
        // [("b", 2), ("a", 1.0)] (sorted by the first field).
        let rows = vec![
            vec![Cell::Text("b".into()), Cell::Int(2)],
            vec![Cell::Text("a".into()), Cell::Float(1.0)],
        ];
        use sha2::{Digest, Sha256};
        let want = hex::encode(&Sha256::digest(b"a\t1.0\nb\t2\n")[..8]);
        assert_eq!(checksum(&rows), want);
    }
}
