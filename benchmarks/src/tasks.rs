//! `--suite tasks`: the control path alone. `count()` over N one-line files is N tasks
//! that do nearly nothing, so their rate is what the driver, QUIC, the executors and the
//! sandbox cost per task, end to end (launch → instantiate → read → status). Each round
//! also runs a shuffle of M map tasks into R reduce partitions, whose map outputs every
//! reduce task must be told where to find.

use crate::{Args, load_average, local_cluster, run_job};
use flint_protocol::conf::Conf;
use std::path::PathBuf;
use std::time::Instant;

/// The shuffle each round also runs: this many map tasks, each writing to nearly every
/// one of this many reduce partitions (two rows per pair), the control path's M x R case.
const SPREAD: (u32, u32) = (500, 500);

/// A directory of `n` one-line files under the bench data directory (made once).
fn tiny_files(args: &Args, n: u32) -> anyhow::Result<PathBuf> {
    let dir = args.data.join(format!("tiny-{n}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:06}.txt")), "x\n")?;
    }
    // A dot file: hidden from the source, as Spark hides them.
    std::fs::write(&done, "")?;
    Ok(dir)
}

pub fn suite(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let counts: Vec<u32> = args
        .tasks
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let dirs: Vec<PathBuf> = counts
        .iter()
        .map(|n| tiny_files(args, *n))
        .collect::<anyhow::Result<_>>()?;
    let jobs = std::fs::read(flint_udfs::TEST_JOBS)?;
    let cache = tempfile::tempdir()?;
    println!(
        "tasks: count() over N one-line files, {} executors x {} cores; load average {}",
        args.executors,
        args.cores,
        load_average()
    );
    let mut rows = Vec::new();
    let mut spread = Vec::new();
    rt.block_on(async {
        let cluster = local_cluster(args, Conf::default(), cache.path()).await?;
        // Compile, and warm every path once.
        run_job(
            &cluster,
            &jobs,
            vec!["count".into(), dirs[0].display().to_string()],
        )
        .await?;
        for round in 1..=args.rounds {
            for (n, dir) in counts.iter().zip(&dirs) {
                let t = Instant::now();
                run_job(
                    &cluster,
                    &jobs,
                    vec!["count".into(), dir.display().to_string()],
                )
                .await?;
                rows.push((*n, t.elapsed().as_secs_f64()));
                eprintln!(
                    "round {round}: {n} tasks in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
            }
            let t = Instant::now();
            run_job(
                &cluster,
                &jobs,
                vec!["spread".into(), SPREAD.0.to_string(), SPREAD.1.to_string()],
            )
            .await?;
            spread.push(t.elapsed().as_secs_f64());
            eprintln!(
                "round {round}: {} maps -> {} reduces in {:.2} s",
                SPREAD.0,
                SPREAD.1,
                t.elapsed().as_secs_f64()
            );
        }
        anyhow::Ok(())
    })?;
    println!(
        "{:>8} | {:>8} | {:>10} | ms per task per slot",
        "tasks", "job s", "tasks/s"
    );
    let slots = (args.executors * args.cores) as f64;
    for n in &counts {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.0 == *n).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        let s = v[v.len() / 2];
        println!(
            "{n:>8} | {s:>8.2} | {:>10.0} | {:.3}",
            *n as f64 / s,
            s * 1e3 * slots / *n as f64
        );
    }
    spread.sort_by(f64::total_cmp);
    println!(
        "{} maps -> {} reduces (a segment of nearly every map output in every reduce \
         partition): {:.2} s",
        SPREAD.0,
        SPREAD.1,
        spread[spread.len() / 2]
    );
    println!(
        "(medians of {} round(s); load average now {})",
        args.rounds,
        load_average()
    );
    Ok(())
}
