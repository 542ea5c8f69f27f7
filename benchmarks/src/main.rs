//! `flint-bench`: measures Flint against a hand-written native Rust program doing the same
//! work on the same cores, in one run, and reports ratios. Run it in release:
//!
//!     cargo run --release -p flint-benchmarks -- --mb 200
//!
//! Numbers are wall-clock on a shared machine: compare ratios from one run, not absolute
//! times across runs.

use anyhow::{Context as _, bail};
use clap::Parser;
use flint_driver::client;
use flint_driver::local::LocalCluster;
use flint_executor_host::sandbox::{Sandbox, SandboxOptions};
use flint_protocol::conf::Conf;
use flint_protocol::wire::SubmitRequest;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let corpus = generate_corpus(&args.data, args.mb)?;
    println!(
        "corpus: {} ({} MB, Zipf(1.0) over 50k words, seed 42)",
        corpus.display(),
        args.mb
    );
    let slots = (args.executors * args.cores) as usize;

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
        let cluster = LocalCluster::start(
            args.executors,
            args.cores,
            Conf::default(),
            Some(cache.path().to_path_buf()),
        )
        .await?;
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
        let cluster = LocalCluster::start(
            args.executors,
            args.cores,
            Conf::default(),
            Some(cache.path().to_path_buf()),
        )
        .await?;
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
                let cluster = LocalCluster::start(
                    args.executors,
                    args.cores,
                    conf,
                    Some(cache.path().to_path_buf()),
                )
                .await?;
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

async fn run_job(cluster: &LocalCluster, wasm: &[u8], args: Vec<String>) -> anyhow::Result<()> {
    let req = SubmitRequest {
        protocol_version: flint_protocol::PROTOCOL_VERSION,
        name: "bench".into(),
        component: wasm.to_vec(),
        args,
        conf: vec![],
        token: None,
    };
    match client::submit(&cluster.member, &cluster.driver_addr, req, |_| {}).await? {
        Ok(_) => Ok(()),
        Err(chain) => bail!("job failed: {}", chain.join(": ")),
    }
}

/// Deterministic corpus: words drawn Zipf(1.0) from a 50k vocabulary, 10 words a line.
fn generate_corpus(dir: &Path, mb: u64) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("corpus-{mb}mb.txt"));
    if path
        .metadata()
        .map(|m| m.len() >= mb << 20)
        .unwrap_or(false)
    {
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
    let mut bounds = vec![0];
    for i in 1..threads {
        let mut b = text.len() * i / threads;
        while b < text.len() && text.as_bytes()[b - 1] != b'\n' {
            b += 1;
        }
        bounds.push(b);
    }
    bounds.push(text.len());
    let parts: Vec<HashMap<&str, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let chunk = &text[w[0]..w[1]];
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
