//! `flint-bench`: measures Flint against a hand-written native Rust program doing the same
//! work on the same cores, in one run, and reports ratios. Run it in release:
//!
//!     cargo run --release -p flint-benchmarks -- --mb 200
//!
//! Numbers are wall-clock on a shared machine: compare ratios from one run, not absolute
//! times across runs.

use anyhow::{Context as _, bail};
use clap::Parser;
use flint_cli::local::LocalCluster;
use flint_client::Submission;
use flint_protocol::conf::Conf;
use flint_sandbox::{Sandbox, SandboxOptions};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod peers;
mod tasks;

/// Set in the environment of this binary re-executed as `flint` (the peers suite times
/// `flint run` as a process without needing the `flint` binary built beside it).
const AS_FLINT: &str = "FLINT_BENCH_AS_FLINT";

#[derive(Parser)]
struct Args {
    /// Size of the generated corpus in MB.
    #[arg(long, default_value_t = 200)]
    mb: u64,
    /// Executors of the local cluster; each gets `--cores` slots.
    #[arg(long, default_value_t = 2)]
    executors: u32,
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// Where the corpus goes (reused when present with the same size).
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    /// Tasks in the empty-task overhead measurement.
    #[arg(long, default_value_t = 200)]
    empty_tasks: u32,
    /// What to measure: `wordcount` (word count, compile cache, task overhead, event log,
    /// fuel), `sales` (the sales aggregation on CSV and Parquet, and the join), `peers`
    /// (the peers' jobs on their data against native Rust, DuckDB and Polars) or `tasks`
    /// (tasks per second on the control path).
    #[arg(long, default_value = "wordcount")]
    suite: String,
    /// `peers`: the folder `../shared/peers` was copied to, with its data generated
    /// (`peers-data/`, or `$PEERS_DATA`) and its `venv/` (default `~/peers`).
    #[arg(long)]
    peers: Option<PathBuf>,
    /// `peers`: the jobs to run (comma-separated; default `wc,aggkey,aggcat,join`).
    #[arg(long)]
    jobs: Option<String>,
    /// `peers` and `tasks`: rounds; each engine's median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// `tasks`: the task counts to measure (comma-separated).
    #[arg(long, default_value = "2000,10000,20000")]
    tasks: String,
    /// Rows of the generated sales table (and orders of the join).
    #[arg(long, default_value_t = 20_000_000)]
    rows: u64,
    /// `wordcount` over a corpus of distinct words (about `--mb` / 10 million of them,
    /// the case a task's memory cannot hold) instead of a Zipf one; measures the count
    /// alone.
    #[arg(long)]
    distinct: bool,
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(AS_FLINT).is_some() {
        return flint_cli::main();
    }
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.suite.as_str() {
        "sales" => return sales_suite(&args, &rt),
        "peers" => return peers::suite(&args, &rt),
        "tasks" => return tasks::suite(&args, &rt),
        "wordcount" => {}
        other => bail!("unknown suite {other}: wordcount, sales, peers or tasks"),
    }
    let corpus = generate_corpus(&args.data, args.mb, args.distinct)?;
    println!(
        "corpus: {} ({} MB, {})",
        corpus.display(),
        args.mb,
        if args.distinct {
            "every word distinct"
        } else {
            "Zipf(1.0) over 50k words, seed 42"
        }
    );
    let slots = (args.executors * args.cores) as usize;
    // Warm the page cache, so that the first to read the corpus does not pay for the disk.
    drop(std::fs::read(&corpus)?);

    // Native baseline: the same count with `slots` threads.
    let t = Instant::now();
    let native = native_wordcount(&corpus, slots)?;
    let native_s = t.elapsed().as_secs_f64();
    println!(
        "native rust, {slots} threads: {native_s:.2}s ({} distinct words)",
        native.len()
    );

    // Flint on the local cluster (component compiled beforehand, from the cache).
    let wasm = std::fs::read(flint_udfs::WORDCOUNT).context("reading wordcount.wasm")?;
    let cache = tempfile::tempdir()?;
    let flint_s = rt.block_on(async {
        let cluster = local_cluster(&args, Conf::default(), cache.path()).await?;
        // Warm the compile cache so the timing is of the job, not of Cranelift.
        let tmp = tempfile::tempdir()?;
        let tiny = tmp.path().join("tiny.txt");
        std::fs::write(&tiny, "warm up\n")?;
        run_job(
            &cluster,
            &wasm,
            vec![
                tiny.display().to_string(),
                tmp.path().join("o").display().to_string(),
            ],
        )
        .await?;
        let out = tmp.path().join("out");
        let t = Instant::now();
        run_job(
            &cluster,
            &wasm,
            vec![corpus.display().to_string(), out.display().to_string()],
        )
        .await?;
        let s = t.elapsed().as_secs_f64();
        let got = read_counts(&out)?;
        if got != native {
            bail!("flint's word count differs from the native count");
        }
        anyhow::Ok(s)
    })?;
    println!(
        "flint local, {} executors x {} cores: {flint_s:.2}s  (flint/native = {:.2}x)",
        args.executors,
        args.cores,
        flint_s / native_s
    );
    if args.distinct {
        println!(
            "peak RSS of this process (native map and flint's cluster): {} MiB",
            peak_rss_mib()
        );
        return Ok(());
    }

    // Compile cold vs from the disk cache.
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let opts = SandboxOptions {
            fuel: false,
            max_instances: 4,
            max_memory_bytes: 1 << 30,
            cache_dir: Some(dir.path().to_path_buf()),
        };
        let t = Instant::now();
        Sandbox::new(opts.clone())?.load_bytes(wasm.clone()).await?;
        let cold = t.elapsed().as_secs_f64();
        let t = Instant::now();
        Sandbox::new(opts)?.load_bytes(wasm.clone()).await?;
        let warm = t.elapsed().as_secs_f64();
        println!(
            "wordcount component ({} KB): compile cold {:.0} ms, load from cache {:.1} ms ({:.0}x)",
            wasm.len() / 1024,
            cold * 1e3,
            warm * 1e3,
            cold / warm
        );
        anyhow::Ok(())
    })?;

    // Per-task overhead: a count over many one-line files is all overhead.
    let jobs = std::fs::read(flint_udfs::TEST_JOBS)?;
    let tiny = tempfile::tempdir()?;
    for i in 0..args.empty_tasks {
        std::fs::write(tiny.path().join(format!("f{i:05}.txt")), "x\n")?;
    }
    rt.block_on(async {
        let cluster = local_cluster(&args, Conf::default(), cache.path()).await?;
        run_job(
            &cluster,
            &jobs,
            vec!["count".into(), tiny.path().display().to_string()],
        )
        .await?;
        let t = Instant::now();
        run_job(
            &cluster,
            &jobs,
            vec!["count".into(), tiny.path().display().to_string()],
        )
        .await?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "empty tasks: {} tasks in {:.2}s on {slots} slots = {:.2} ms per task per slot",
            args.empty_tasks,
            s,
            s * 1e3 * slots as f64 / args.empty_tasks as f64
        );
        anyhow::Ok(())
    })?;

    // The event log's cost: the same word count and empty-task job on a cluster that
    // logs every scheduler event and on one that does not, alternated.
    rt.block_on(async {
        let logs = tempfile::tempdir()?;
        let mut times = [[0f64; 2]; 2];
        for _round in 0..2 {
            for (i, log) in [None, Some(logs.path().to_path_buf())].into_iter().enumerate() {
                let cluster = LocalCluster::start_with(
                    args.executors,
                    args.cores,
                    Conf::default(),
                    Some(cache.path().to_path_buf()),
                    None,
                    log,
                )
                .await?;
                times[0][i] += timed_word_count(&cluster, &wasm, &corpus).await? / 2.0;
                let t = Instant::now();
                run_job(
                    &cluster,
                    &jobs,
                    vec!["count".into(), tiny.path().display().to_string()],
                )
                .await?;
                times[1][i] += t.elapsed().as_secs_f64() / 2.0;
            }
        }
        println!(
            "event log: word count {:.2}s without, {:.2}s with ({:.3}x); {} empty tasks {:.2}s without, {:.2}s with ({:.3}x)",
            times[0][0],
            times[0][1],
            times[0][1] / times[0][0],
            args.empty_tasks,
            times[1][0],
            times[1][1],
            times[1][1] / times[1][0]
        );
        anyhow::Ok(())
    })?;

    // The sandbox's fuel metering: the same word count with and without it, alternated.
    rt.block_on(async {
        let mut times = [0f64; 2];
        for _round in 0..2 {
            for (i, fuel) in ["false", "true"].into_iter().enumerate() {
                let mut conf = Conf::default();
                conf.set("task.meter_fuel", fuel)?;
                let cluster = local_cluster(&args, conf, cache.path()).await?;
                times[i] += timed_word_count(&cluster, &wasm, &corpus).await? / 2.0;
            }
        }
        println!(
            "fuel metering: word count {:.2}s without, {:.2}s with ({:.3}x); epoch deadline and memory cap are always on in both",
            times[0],
            times[1],
            times[1] / times[0]
        );
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Seconds the word count of `corpus` takes on `cluster` (output to a scratch dir).
async fn timed_word_count(
    cluster: &LocalCluster,
    wasm: &[u8],
    corpus: &Path,
) -> anyhow::Result<f64> {
    let out = tempfile::tempdir()?;
    let t = Instant::now();
    run_job(
        cluster,
        wasm,
        vec![
            corpus.display().to_string(),
            out.path().join("o").display().to_string(),
        ],
    )
    .await?;
    Ok(t.elapsed().as_secs_f64())
}

/// A local cluster of `args.executors` × `args.cores` sharing the compile cache `cache`.
async fn local_cluster(args: &Args, conf: Conf, cache: &Path) -> anyhow::Result<LocalCluster> {
    LocalCluster::start(args.executors, args.cores, conf, Some(cache.to_path_buf())).await
}

async fn run_job(cluster: &LocalCluster, wasm: &[u8], args: Vec<String>) -> anyhow::Result<()> {
    let submission = Submission {
        name: "bench".into(),
        component: wasm.to_vec(),
        args,
        conf: vec![],
        token: None,
    };
    match flint_client::submit(&cluster.client, submission, |_| {}).await? {
        Ok(_) => Ok(()),
        Err(e) => bail!("job failed: {e}"),
    }
}

/// Deterministic corpus: words drawn Zipf(1.0) from a 50k vocabulary, 10 words a line.
fn generate_corpus(dir: &Path, mb: u64, distinct: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(if distinct {
        format!("corpus-{mb}mb-distinct.txt")
    } else {
        format!("corpus-{mb}mb.txt")
    });
    if path
        .metadata()
        .map(|m| m.len() >= mb << 20)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    if distinct {
        // 10 words of 9 bytes a line, each word once.
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let (mut written, mut i) = (0u64, 0u64);
        while written < mb << 20 {
            let mut line = String::with_capacity(100);
            for j in 0..10 {
                if j > 0 {
                    line.push(' ');
                }
                line.push_str(&format!("u{i:08x}"));
                i += 1;
            }
            line.push('\n');
            f.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        return Ok(path);
    }
    let vocab: Vec<String> = (0..50_000u32).map(|i| format!("w{i:x}")).collect();
    // Cumulative Zipf(1.0) weights for inverse-CDF sampling.
    let mut cdf = Vec::with_capacity(vocab.len());
    let mut acc = 0.0;
    for k in 1..=vocab.len() {
        acc += 1.0 / k as f64;
        cdf.push(acc);
    }
    let mut x: u64 = 42;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut written = 0u64;
    while written < mb << 20 {
        let mut line = String::new();
        for i in 0..10 {
            let r = next() * acc;
            let k = cdf.partition_point(|c| *c < r).min(vocab.len() - 1);
            if i > 0 {
                line.push(' ');
            }
            line.push_str(&vocab[k]);
        }
        line.push('\n');
        f.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(tmp, &path)?;
    Ok(path)
}

/// The baseline: split the file at line boundaries, count per thread, merge.
fn native_wordcount(path: &Path, threads: usize) -> anyhow::Result<HashMap<String, u64>> {
    let data = std::fs::read(path)?;
    let text = std::str::from_utf8(&data)?;
    let parts: Vec<HashMap<&str, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = split_lines(text, threads)
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut m: HashMap<&str, u64> = HashMap::new();
                    for word in chunk.split_ascii_whitespace() {
                        *m.entry(word).or_insert(0) += 1;
                    }
                    m
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("counting thread"))
            .collect()
    });
    let mut total: HashMap<String, u64> = HashMap::new();
    for p in parts {
        for (w, n) in p {
            *total.entry(w.to_string()).or_insert(0) += n;
        }
    }
    Ok(total)
}

fn read_counts(dir: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let mut m = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&p)?.lines() {
            let (w, n) = line.rsplit_once('\t').context("bad output line")?;
            m.insert(w.to_string(), n.parse()?);
        }
    }
    Ok(m)
}

const REGIONS: [&str; 8] = [
    "north",
    "south",
    "east",
    "west",
    "central",
    "islands",
    "mountains",
    "coast",
];
const COUNTRIES: [&str; 6] = ["de", "fr", "jp", "br", "us", "in"];
const CUSTOMERS: u64 = 100_000;

/// Deterministic generator for the sales tables.
struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `sales.csv` (region,product,quantity,price), `orders.csv` (order_id,customer_id,amount)
/// and `customers.csv` (customer_id,name,country), `rows` rows each for the first two.
fn generate_sales(dir: &Path, rows: u64) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = dir.join(format!("sales-{rows}"));
    std::fs::create_dir_all(&dir)?;
    let (sales, orders, customers) = (
        dir.join("sales.csv"),
        dir.join("orders.csv"),
        dir.join("customers.csv"),
    );
    if customers.exists() {
        return Ok((sales, orders, customers));
    }
    let mut x = Xs(42);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&sales)?);
    writeln!(f, "region,product,quantity,price")?;
    for _ in 0..rows {
        let r = REGIONS[(x.next() % 8) as usize];
        let p = x.next() % 1000;
        let q = 1 + x.next() % 20;
        let c = 100 + x.next() % 99_900;
        writeln!(f, "{r},p{p},{q},{}.{:02}", c / 100, c % 100)?;
    }
    f.flush()?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&orders)?);
    writeln!(f, "order_id,customer_id,amount")?;
    for o in 0..rows {
        let cust = x.next() % (CUSTOMERS + CUSTOMERS / 10);
        let c = 100 + x.next() % 99_900;
        writeln!(f, "{o},{cust},{}.{:02}", c / 100, c % 100)?;
    }
    f.flush()?;
    let tmp = customers.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    writeln!(f, "customer_id,name,country")?;
    for id in 0..CUSTOMERS {
        writeln!(f, "{id},name{id},{}", COUNTRIES[(x.next() % 6) as usize])?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(tmp, &customers)?;
    Ok((sales, orders, customers))
}

/// Splits `text` (after its header line) into `n` chunks at line boundaries.
fn line_chunks(text: &str, n: usize) -> Vec<&str> {
    split_lines(&text[text.find('\n').map_or(text.len(), |i| i + 1)..], n)
}

/// Splits `body` into `n` chunks of about equal size at line boundaries.
fn split_lines(body: &str, n: usize) -> Vec<&str> {
    let mut bounds = vec![0];
    for i in 1..n {
        let mut b = body.len() * i / n;
        while b < body.len() && body.as_bytes()[b - 1] != b'\n' {
            b += 1;
        }
        bounds.push(b);
    }
    bounds.push(body.len());
    bounds.windows(2).map(|w| &body[w[0]..w[1]]).collect()
}

type RegionTotals = std::collections::BTreeMap<String, (u64, i64, f64)>;

/// The native baseline: parse the CSV by hand in `threads` threads, sum per region.
fn native_sales_csv(path: &Path, threads: usize) -> anyhow::Result<RegionTotals> {
    let data = std::fs::read_to_string(path)?;
    let parts: Vec<RegionTotals> = std::thread::scope(|s| {
        let hs: Vec<_> = line_chunks(&data, threads)
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut m: HashMap<&str, (u64, i64, f64)> = HashMap::new();
                    for line in chunk.lines() {
                        let mut f = line.split(',');
                        let (Some(r), Some(_), Some(q), Some(p)) =
                            (f.next(), f.next(), f.next(), f.next())
                        else {
                            continue;
                        };
                        let (q, p): (i64, f64) = (q.parse().unwrap_or(0), p.parse().unwrap_or(0.0));
                        let e = m.entry(r).or_default();
                        e.0 += 1;
                        e.1 += q;
                        e.2 += q as f64 * p;
                    }
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    Ok(merge_totals(parts))
}

fn merge_totals(parts: Vec<RegionTotals>) -> RegionTotals {
    let mut total = RegionTotals::new();
    for p in parts {
        for (k, v) in p {
            let e = total.entry(k).or_default();
            e.0 += v.0;
            e.1 += v.1;
            e.2 += v.2;
        }
    }
    total
}

/// The native baseline on Parquet: the row groups read by `threads` threads with the
/// parquet crate, summed per region.
fn native_sales_parquet(dir: &Path, threads: usize) -> anyhow::Result<RegionTotals> {
    use arrow_array::{Array, Float64Array, Int64Array, StringArray};
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();
    let parts: Vec<anyhow::Result<RegionTotals>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<&PathBuf> = files.iter().skip(t).step_by(threads).collect();
                s.spawn(move || {
                    let mut m = RegionTotals::new();
                    for f in mine {
                        // The columns it needs, as Flint's job reads them.
                        let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?;
                        let mask = ProjectionMask::columns(
                            b.parquet_schema(),
                            ["region", "quantity", "price"],
                        );
                        let r = b.with_projection(mask).build()?;
                        for b in r {
                            let b = b?;
                            let col = |n: &str| b.column_by_name(n).context("column").cloned();
                            let (r, q, p) = (col("region")?, col("quantity")?, col("price")?);
                            let r = r.as_any().downcast_ref::<StringArray>().context("region")?;
                            let q = q
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .context("quantity")?;
                            let p = p.as_any().downcast_ref::<Float64Array>().context("price")?;
                            for i in 0..b.num_rows() {
                                let add = |e: &mut (u64, i64, f64)| {
                                    e.0 += 1;
                                    e.1 += q.value(i);
                                    e.2 += q.value(i) as f64 * p.value(i);
                                };
                                // A String only for a region not seen yet.
                                match m.get_mut(r.value(i)) {
                                    Some(e) => add(e),
                                    None => add(m.entry(r.value(i).to_string()).or_default()),
                                }
                            }
                        }
                    }
                    anyhow::Ok(m)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    Ok(merge_totals(
        parts.into_iter().collect::<anyhow::Result<_>>()?,
    ))
}

/// The native join baseline: customers into a hash map, orders streamed in `threads`
/// threads, revenue and orders per country (unknown customers under `unknown`).
fn native_join(
    orders: &Path,
    customers: &Path,
    threads: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, (u64, f64)>> {
    let ctext = std::fs::read_to_string(customers)?;
    let mut country: HashMap<u64, &str> = HashMap::new();
    for line in ctext.lines().skip(1) {
        let mut f = line.split(',');
        if let (Some(id), Some(_), Some(c)) = (f.next(), f.next(), f.next()) {
            country.insert(id.parse()?, c);
        }
    }
    let otext = std::fs::read_to_string(orders)?;
    let country = &country;
    let parts: Vec<HashMap<String, (u64, f64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = line_chunks(&otext, threads)
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut m: HashMap<&str, (u64, f64)> = HashMap::new();
                    for line in chunk.lines() {
                        let mut f = line.split(',');
                        let (Some(_), Some(c), Some(a)) = (f.next(), f.next(), f.next()) else {
                            continue;
                        };
                        let c: u64 = c.parse().unwrap_or(u64::MAX);
                        let k = country.get(&c).copied().unwrap_or("unknown");
                        let e = m.entry(k).or_default();
                        e.0 += 1;
                        e.1 += a.parse::<f64>().unwrap_or(0.0);
                    }
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut total = std::collections::BTreeMap::new();
    for p in parts {
        for (k, v) in p {
            let e: &mut (u64, f64) = total.entry(k).or_default();
            e.0 += v.0;
            e.1 += v.1;
        }
    }
    Ok(total)
}

fn read_region_totals(dir: &Path) -> anyhow::Result<RegionTotals> {
    use arrow_array::{Array, Float64Array, Int64Array, StringArray, UInt64Array};
    let mut m = RegionTotals::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&p)?,
        )?
        .build()?;
        for b in r {
            let b = b?;
            let c = |n: &str| b.column_by_name(n).context("column").cloned();
            let (r, s, u, v) = (c("region")?, c("sales")?, c("units")?, c("revenue")?);
            let r = r.as_any().downcast_ref::<StringArray>().context("region")?;
            let s = s.as_any().downcast_ref::<UInt64Array>().context("sales")?;
            let u = u.as_any().downcast_ref::<Int64Array>().context("units")?;
            let v = v
                .as_any()
                .downcast_ref::<Float64Array>()
                .context("revenue")?;
            for i in 0..b.num_rows() {
                m.insert(r.value(i).to_string(), (s.value(i), u.value(i), v.value(i)));
            }
        }
    }
    Ok(m)
}

fn same_totals(a: &RegionTotals, b: &RegionTotals) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && va.0 == vb.0 && va.1 == vb.1 && (va.2 - vb.2).abs() <= 1e-6 * va.2.abs()
        })
}

fn sales_suite(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (sales, orders, customers) = generate_sales(&args.data, args.rows)?;
    let mb = |p: &Path| p.metadata().map(|m| m.len() >> 20).unwrap_or(0);
    println!(
        "sales: {} rows ({} MB CSV), orders: {} rows ({} MB), customers: {CUSTOMERS}",
        args.rows,
        mb(&sales),
        args.rows,
        mb(&orders)
    );
    let slots = (args.executors * args.cores) as usize;
    let sales_wasm = std::fs::read(flint_udfs::SALES)?;
    let join_wasm = std::fs::read(flint_udfs::JOIN)?;
    let cache = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let s = |p: &Path| p.display().to_string();
    rt.block_on(async {
        let cluster = local_cluster(args, Conf::default(), cache.path()).await?;
        // Compile both components first: the timings are of the jobs.
        for w in [&sales_wasm, &join_wasm] {
            let _ = run_job(&cluster, w, vec![]).await;
        }
        let pq = args.data.join(format!("sales-{}", args.rows)).join("parquet");
        if !pq.join("_SUCCESS").exists() {
            let _ = std::fs::remove_dir_all(&pq);
            run_job(&cluster, &sales_wasm, vec!["convert".into(), s(&sales), s(&pq)]).await?;
        }

        // Warm the page cache for both sides alike: the first reader must not pay for
        // the disk alone.
        let mut warm = vec![sales.clone(), orders.clone(), customers.clone()];
        for e in std::fs::read_dir(&pq)? {
            warm.push(e?.path());
        }
        for p in warm.iter().filter(|p| p.is_file()) {
            std::fs::read(p)?;
        }
        let t = Instant::now();
        let native = native_sales_csv(&sales, slots)?;
        let native_csv = t.elapsed().as_secs_f64();
        let o = out.path().join("csv");
        let t = Instant::now();
        run_job(&cluster, &sales_wasm, vec!["csv".into(), s(&sales), s(&o)]).await?;
        let flint_csv = t.elapsed().as_secs_f64();
        if !same_totals(&read_region_totals(&o)?, &native) {
            bail!("flint's sales totals (CSV) differ from the native ones");
        }
        println!(
            "sales aggregation, CSV: native {slots} threads {native_csv:.2}s, flint {flint_csv:.2}s (flint/native = {:.2}x)",
            flint_csv / native_csv
        );

        let t = Instant::now();
        let native_pq = native_sales_parquet(&pq, slots)?;
        let native_parquet = t.elapsed().as_secs_f64();
        let o = out.path().join("parquet");
        let t = Instant::now();
        run_job(&cluster, &sales_wasm, vec!["parquet".into(), s(&pq), s(&o)]).await?;
        let flint_parquet = t.elapsed().as_secs_f64();
        if !same_totals(&read_region_totals(&o)?, &native_pq) || !same_totals(&native_pq, &native)
        {
            bail!("sales totals on Parquet differ");
        }
        println!(
            "sales aggregation, Parquet: native {slots} threads {native_parquet:.2}s, flint {flint_parquet:.2}s (flint/native = {:.2}x)",
            flint_parquet / native_parquet
        );

        let t = Instant::now();
        let native_j = native_join(&orders, &customers, slots)?;
        let native_join_s = t.elapsed().as_secs_f64();
        let o = out.path().join("join");
        let t = Instant::now();
        run_job(
            &cluster,
            &join_wasm,
            vec![s(&orders), s(&customers), s(&o)],
        )
        .await?;
        let flint_join = t.elapsed().as_secs_f64();
        let mut got = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&o)? {
            let p = e?.path();
            if p.extension().is_none_or(|e| e != "csv") {
                continue;
            }
            for l in std::fs::read_to_string(&p)?.lines().skip(1) {
                let f: Vec<&str> = l.split(',').collect();
                got.insert(f[0].to_string(), (f[1].parse::<u64>()?, f[2].parse::<f64>()?));
            }
        }
        let same = got.len() == native_j.len()
            && got.iter().zip(&native_j).all(|((ka, a), (kb, b))| {
                ka == kb && a.0 == b.0 && (a.1 - b.1).abs() <= 1e-6 * b.1.abs()
            });
        if !same {
            bail!("flint's join differs from the native join: {got:?} vs {native_j:?}");
        }
        println!(
            "join (orders x customers, left outer): native {slots} threads {native_join_s:.2}s, flint {flint_join:.2}s (flint/native = {:.2}x)",
            flint_join / native_join_s
        );
        anyhow::Ok(())
    })
}

/// The 1-minute load average, as `uptime` shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// This process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}
