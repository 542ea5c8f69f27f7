//! Test jobs: `SCENARIO ARGS...` picks what the job does.
//! - `count INPUT`: prints the number of lines of INPUT.
//! - `collect-lengths INPUT`: prints the sum of line lengths, computed from `collect`.
//! - `skewed-join N`: rows 0..N keyed `0` (four in five) or by `x % 100`, joined with
//!   keys 0..100 valued `10 k`; prints `skewed-join: rows= sum=` (the sum of row plus
//!   value over the joined pairs).
//! - `reused-shuffle INPUT`: a word count's counts, counted, collected and taken from
//!   (three jobs over one shuffle); prints `reused-shuffle: distinct= collected= took=`.
//! - `instance-globals INPUT`: numbers INPUT's lines by a global counter of the instance
//!   that maps them (each task prints `task P row N`), and prints
//!   `instance-globals: max=N`: how many lines one instance saw, less one.
//! - `panic-in-task INPUT OUTPUT`: a map panics on a line containing `boom`.
//! - `error-in-main`: `main` returns an error.
//! - `panic-in-main`: `main` panics.
//! - `slow-wordcount INPUT OUTPUT`: a word count whose map side sleeps 20 ms per line and
//!   whose reduce side sleeps 30 ms per word, so fault tests can strike mid-stage.
//! - `slow-wordfreq INPUT OUTPUT`: three stages: the slow word count, then how many words
//!   occur each number of times (`count\twords` lines).
//! - Hostile guests, each `NAME INPUT` (a count over INPUT whose map misbehaves), except
//!   `huge-output INPUT OUTPUT` and `spin-in-main`: `spin-in-task` (an endless loop),
//!   `alloc-in-task` (allocates until the cap), `recurse-in-task` (unbounded recursion),
//!   `unreachable-in-task` (a Wasm `unreachable`), `divide-by-zero`, `read-passwd`
//!   (opens /etc/passwd), `open-socket` (connects to 127.0.0.1:22), `huge-output` (writes
//!   10 KB per input byte), `spin-in-main` (the driver program never returns).
//! - `operators DIR`: every operator and format of the SDK over `range` and
//!   `parallelize` data, printing `name: value` lines for the test to check; DIR receives
//!   saved JSON lines, Arrow and CSV files that are read back.
//! - `cache INPUT LEVEL`: line lengths persisted at LEVEL (`memory`, `memory-and-disk`,
//!   `disk`), used by three actions, then unpersisted and counted once more.
//! - `slow-cached-join INPUT OUTPUT`: the slow word count, cached and counted (job 1),
//!   then joined with itself doubled and written as `word\tn\t2n` lines (job 2) with a
//!   slow map, so a fault test can strike while job 2 reads the cached partitions.
//! - `accumulate INPUT`: sums the numbers of INPUT's lines, skipping lines found in a
//!   broadcast stop list and counting unparsable ones in an accumulator; the first
//!   attempt of partition 1 fails after adding, so its additions must not count.
//! - `straggler INPUT OUTPUT`: a word count whose map tasks sleep 200 ms per line on
//!   executor 1 only: a slow machine, for speculation.
//! - Hostile driver programs, each a short program a tenant could write that asks the
//!   driver for too much: `many-partitions` (a shuffle into 4 000 000 000 partitions),
//!   `deep-chain` (3 000 maps in a row), `union-doubling` (a dataset unioned with itself
//!   40 times), `glob-bomb DIR` (a pattern with 30 stars, matched against a long name),
//!   `collect-huge INPUT` (every line made 1 KiB, all collected through one partition),
//!   `broadcast-bomb MB` (broadcasts of 100 MB until MB are held).
//! - Data larger than the task's memory, each `NAME N ...`: `spill-agg N` (N distinct
//!   string keys, each twice, summed with `reduce_by_key`; prints `agg: distinct=
//!   total= checksum=`), `spill-group N` (`group_by_key` of N keys with 2 values each;
//!   prints `group: keys= values= checksum=`), `spill-sort N OUTPUT` (N rows with 48
//!   bytes of padding, sorted by a scrambled key and saved as `key` lines), `spill-join
//!   N` (keys 0..N with 40 bytes of value joined with keys N/2..3N/2; prints `join:
//!   rows= checksum= bad=`), `spill-cogroup N` (the same sides cogrouped; prints
//!   `cogroup: keys= left= right= checksum=`), `spill-partition N` (N rows of 48 bytes
//!   coalesced into one partition and numbered by `map_partitions`; prints `partition:
//!   rows= sum= out_of_order=`), `spill-hot-key N` (`group_by_key` of 2N rows, half of
//!   them under one key), `spill-frame N DIR` (as `spill-agg`, its rows saved as
//!   Parquet in DIR and aggregated by a frame's `group_by`; prints `agg: distinct=
//!   total= checksum= rows=`), `spill-frame-join N DIR` (the sides of `spill-join`
//!   saved as Parquet in DIR and joined as frames; prints `join: rows= checksum= bad=`),
//!   `io …` (sources and saves of flights: see [`io`]).
//! - `frame-join L R KEY DIR`: L left rows (`k = x % 100`, null when 7 divides x; `name =
//!   "n{k}"`; `a = x`) and R right rows (`k = x % 50` as `Int32`; `name`; `b = x`) saved
//!   as Parquet in DIR, joined as frames on KEY (`k` or `name`), `x = a * b + 1`
//!   computed and grouped by the key: prints `frame-join: key= n= sum= max_b=` lines.

use flint::{Context, Error, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let args = ctx.all_args().to_vec();
    match args.first().map(String::as_str) {
        Some("operators") => operators(ctx, &args[1])?,
        Some("io") => io(ctx, &args[1..])?,
        Some(name @ ("spill-join" | "spill-cogroup")) => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            let left = ctx
                .range(0, n, 256)?
                .map(|x: i64| (format!("key-{x:012}"), format!("{x:040}")));
            let right = ctx
                .range(n / 2, n / 2 + n, 256)?
                .map(|x: i64| (format!("key-{x:012}"), format!("{:040}", 3 * x)));
            let id = |k: &str| k[4..].parse::<u64>().unwrap_or(u64::MAX);
            if name == "spill-join" {
                let sums = left
                    .join(&right)
                    .map(move |(k, (l, r)): (String, (String, String))| {
                        let i = id(&k);
                        let ok = l.parse() == Ok(i) && r.parse() == Ok(3 * i);
                        (1u64, i, u64::from(!ok))
                    })
                    .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))?
                    .unwrap_or((0, 0, 0));
                println!("join: rows={} checksum={} bad={}", sums.0, sums.1, sums.2);
            } else {
                let sums = left
                    .cogroup(&right)
                    .map(move |(k, (ls, rs)): (String, (Vec<String>, Vec<String>))| {
                        let (l, r) = (ls.len() as u64, rs.len() as u64);
                        (1u64, l, r, id(&k) * (l + 2 * r))
                    })
                    .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3))?
                    .unwrap_or((0, 0, 0, 0));
                println!(
                    "cogroup: keys={} left={} right={} checksum={}",
                    sums.0, sums.1, sums.2, sums.3
                );
            }
        }
        Some("spill-hot-key") => {
            // Half the rows under one key: its group cannot fit, however the rest spills.
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            let groups = ctx
                .range(0, 2 * n, 256)?
                .map(|x: i64| {
                    let k = if x % 2 == 0 { -1 } else { x };
                    (format!("key-{k:012}"), format!("{x:040}"))
                })
                .group_by_key()
                .count()?;
            println!("hot key: groups={groups}");
        }
        Some("spill-partition") => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            let sums = ctx
                .range(0, n, 256)?
                .map(|x: i64| (x as u64, "p".repeat(48)))
                .coalesce(1)
                .map_partitions(|rows: flint::Partition<(u64, String)>| {
                    // Lazily: each row with its place in the partition.
                    rows.zip(0u64..)
                        .map(|((x, pad), i)| (x, i, pad.len() as u64))
                })
                .map(|(x, i, len): (u64, u64, u64)| (1u64, x + len - 48, u64::from(x != i)))
                .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))?
                .unwrap_or((0, 0, 0));
            println!(
                "partition: rows={} sum={} out_of_order={}",
                sums.0, sums.1, sums.2
            );
        }
        Some("spill-frame") => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            #[derive(serde::Serialize, serde::Deserialize)]
            struct Pair {
                key: String,
                v: i64,
            }
            #[derive(serde::Serialize, serde::Deserialize)]
            struct Sum {
                key: String,
                total: i64,
                n: i64,
            }
            // Two files, so that a map task holds more groups than its memory.
            ctx.range(0, 2 * n, 256)?
                .map(|x: i64| Pair {
                    key: format!("key-{:012}", x / 2),
                    v: x % 2 + 1,
                })
                .coalesce(2)
                .save_as_parquet(&args[2])?;
            let sums = ctx
                .parquet_frame(&args[2], &["key", "v"])?
                .group_by(["key"])
                .agg([
                    flint::Agg::sum("v").alias("total"),
                    flint::Agg::count().alias("n"),
                ])
                .rows::<Sum>()
                .map(|s: Sum| {
                    let id: u64 = s.key[4..].parse().unwrap_or(0);
                    (1u64, s.total as u64, id * s.total as u64, s.n as u64)
                })
                .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3))?
                .unwrap_or((0, 0, 0, 0));
            println!(
                "agg: distinct={} total={} checksum={} rows={}",
                sums.0, sums.1, sums.2, sums.3
            );
        }
        Some("spill-frame-join") => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            #[derive(serde::Serialize, serde::Deserialize)]
            struct Left {
                key: String,
                l: String,
            }
            #[derive(serde::Serialize, serde::Deserialize)]
            struct Right {
                key: String,
                r: String,
            }
            #[derive(serde::Serialize, serde::Deserialize)]
            struct Joined {
                key: String,
                l: String,
                r: String,
            }
            let (left, right) = (format!("{}/left", args[2]), format!("{}/right", args[2]));
            ctx.range(0, n, 256)?
                .map(|x: i64| Left {
                    key: format!("key-{x:012}"),
                    l: format!("{x:040}"),
                })
                .coalesce(2)
                .save_as_parquet(&left)?;
            ctx.range(n / 2, n / 2 + n, 256)?
                .map(|x: i64| Right {
                    key: format!("key-{x:012}"),
                    r: format!("{:040}", 3 * x),
                })
                .coalesce(2)
                .save_as_parquet(&right)?;
            let sums = ctx
                .parquet_frame(&left, &["key", "l"])?
                .join(&ctx.parquet_frame(&right, &["key", "r"])?, ["key"])
                .rows::<Joined>()
                .map(|j: Joined| {
                    let i: u64 = j.key[4..].parse().unwrap_or(u64::MAX);
                    let ok = j.l.parse() == Ok(i) && j.r.parse() == Ok(3 * i);
                    (1u64, i, u64::from(!ok))
                })
                .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))?
                .unwrap_or((0, 0, 0));
            println!("join: rows={} checksum={} bad={}", sums.0, sums.1, sums.2);
        }
        Some("frame-join") => frame_join(ctx, &args[1..])?,
        Some(name @ ("spill-agg" | "spill-group" | "spill-sort")) => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            // Many small partitions: `range` makes a partition's rows in one batch.
            let xs = ctx.range(0, 2 * n, 256)?;
            match name {
                "spill-agg" => {
                    let sums = xs
                        .map(|x: i64| (format!("key-{:012}", x / 2), (x % 2 + 1) as u64))
                        .reduce_by_key(|a, b| a + b)
                        .map(|(k, v): (String, u64)| {
                            let id: u64 = k[4..].parse().unwrap_or(0);
                            (1u64, v, id * v)
                        })
                        .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))?
                        .unwrap_or((0, 0, 0));
                    println!(
                        "agg: distinct={} total={} checksum={}",
                        sums.0, sums.1, sums.2
                    );
                }
                "spill-group" => {
                    let sums = xs
                        .map(|x: i64| (format!("key-{:012}", x / 2), x as u64))
                        .group_by_key()
                        .map(|(k, vs): (String, Vec<u64>)| {
                            let id: u64 = k[4..].parse().unwrap_or(0);
                            (1u64, vs.len() as u64, id * vs.iter().sum::<u64>())
                        })
                        .reduce(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))?
                        .unwrap_or((0, 0, 0));
                    println!(
                        "group: keys={} values={} checksum={}",
                        sums.0, sums.1, sums.2
                    );
                }
                _ => {
                    ctx.range(0, n, 256)?
                        .map(|x: i64| (scramble(x as u64), "p".repeat(48)))
                        .sort_by(|r: &(u64, String)| r.0, true)?
                        .map(|(k, _): (u64, String)| format!("{k:020}"))
                        .save_as_text(&args[2])?;
                }
            }
        }
        // One `take` over 10 partitions of 100 rows each (0..1000), for the test to
        // count the jobs and tasks it ran.
        Some("take") => {
            let xs = ctx.range(0, 1000, 10)?;
            let got = match args[1].as_str() {
                "first" => xs.first()?.into_iter().collect(),
                // Only the last partition has such rows.
                "late" => xs.filter(|x: &i64| *x >= 950).take(5)?,
                // 3 rows in partition 0 but 250 wanted: the rows found say how far.
                "sparse" => xs.filter(|x: &i64| x % 40 == 0).take(10)?,
                "shuffled" => xs
                    .map(|x: i64| (x % 100, x))
                    .group_by_key()
                    .keys()
                    .take(2)?,
                "all" => xs.take(5000)?,
                other => return Err(Error::msg(format!("unknown take case {other}"))),
            };
            println!("took {} rows: {:?}", got.len(), &got[..got.len().min(10)]);
        }
        Some("cache") => {
            use flint::StorageLevel;
            let level = match args[2].as_str() {
                "memory" => StorageLevel::MemoryOnly,
                "memory-and-disk" => StorageLevel::MemoryAndDisk,
                "disk" => StorageLevel::DiskOnly,
                other => return Err(Error::msg(format!("unknown level {other}"))),
            };
            let lens = ctx
                .text_file(&args[1])?
                .map(|l: String| l.len() as u64)
                .persist(level);
            let a = lens.count()?;
            let b = lens.reduce(|x, y| x + y)?.unwrap_or(0);
            let c = lens.count()?;
            println!("cached: {a} {b} {c}");
            lens.unpersist();
            println!("after unpersist: {}", lens.count()?);
        }
        Some("count") => {
            let n = ctx.text_file(&args[1])?.count()?;
            println!("lines: {n}");
        }
        Some("spread") => {
            // M map tasks each writing to (nearly) every one of R reduce partitions: the
            // control path's M x R case.
            let num = |i: usize| -> Result<i64, Error> {
                args.get(i)
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| Error::msg("usage: spread MAPS REDUCES"))
            };
            let (maps, reduces) = (num(1)?, num(2)?);
            let n = ctx
                .range(0, 2 * maps * reduces, maps as u32)?
                .map(|x: i64| (x, 1u64))
                .reduce_by_key(|a, b| a + b)
                .with_partitions(reduces as u32)
                .count()?;
            println!("spread: {n}");
        }
        Some("skewed-join") => {
            let n: i64 = args[1].parse().map_err(|_| Error::msg("N is a number"))?;
            let rows = ctx
                .range(0, n, 8)?
                .map(|x: i64| (if x % 5 != 0 { 0 } else { x % 100 }, x));
            let keys = ctx.parallelize((0..100i64).map(|k| (k, 10 * k)).collect(), 2)?;
            let joined = rows
                .join(&keys)
                .map(|(_, (x, v)): (i64, (i64, i64))| (1u64, x + v))
                .reduce(|a, b| (a.0 + b.0, a.1 + b.1))?
                .unwrap_or((0, 0));
            println!("skewed-join: rows={} sum={}", joined.0, joined.1);
        }
        Some("reused-shuffle") => {
            let counts = ctx
                .text_file(&args[1])?
                .flat_map(|l: String| {
                    l.split_ascii_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .map(|w: String| (w, 1u64))
                .reduce_by_key(|a, b| a + b);
            let distinct = counts.count()?;
            let collected = counts.collect()?.len();
            let took = counts.take(2)?.len();
            println!("reused-shuffle: distinct={distinct} collected={collected} took={took}");
        }
        Some("instance-globals") => {
            let rows = ctx
                .text_file(&args[1])?
                .map(|_: String| {
                    static ROWS: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let n = ROWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let p = flint::task_context().map_or(0, |t| t.partition);
                    println!("task {p} row {n}");
                    n
                })
                .collect()?;
            println!(
                "instance-globals: max={}",
                rows.iter().max().copied().unwrap_or(0)
            );
        }
        Some("collect-lengths") => {
            let lens = ctx
                .text_file(&args[1])?
                .map(|l: String| l.len() as u64)
                .collect()?;
            println!("total length: {}", lens.iter().sum::<u64>());
        }
        Some("panic-in-task") => {
            ctx.text_file(&args[1])?
                .map(|l: String| {
                    if l.contains("boom") {
                        panic!("deliberate panic on line {l:?}");
                    }
                    l
                })
                .save_as_text(&args[2])?;
        }
        Some("error-in-main") => {
            return Err(Error::msg("deliberate failure").context("the job gave up"));
        }
        Some("panic-in-main") => panic!("deliberate panic in main"),
        Some("slow-wordcount") => {
            slow_counts(ctx, &args[1])?.save_as_text(&args[2])?;
        }
        Some("accumulate") => {
            use flint::{Accumulator, Broadcast};
            let bad = ctx.accumulator::<u64>();
            let seen = ctx.accumulator::<u64>();
            let stop = ctx.broadcast(&vec!["skip".to_string()])?;
            type Shared = (Accumulator<u64>, Accumulator<u64>, Broadcast<Vec<String>>);
            let nums = ctx.text_file(&args[1])?.flat_map_with(
                &(bad.clone(), seen.clone(), stop),
                |(bad, seen, stop): &Shared, l: String| {
                    seen.add(1);
                    let t = flint::task_context().expect("in a task");
                    if t.partition == 1 && t.attempt == 0 {
                        panic!("deliberate failure of the first attempt, after adding");
                    }
                    if stop.value().expect("the stop list").contains(&l) {
                        return None;
                    }
                    match l.trim().parse::<i64>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            bad.add(1);
                            None
                        }
                    }
                },
            );
            let sum = nums.fold(0, |a, b| a + b)?;
            println!("sum: {sum}, bad: {}, seen: {}", bad.value()?, seen.value()?);
        }
        Some("slow-cached-join") => {
            let counts = slow_counts(ctx, &args[1])?.cache();
            println!("words: {}", counts.count()?);
            let doubled = counts.map_values(|n: u64| n * 2);
            counts
                .join(&doubled)
                .map(|(w, (a, b)): (String, (u64, u64))| {
                    sleep_ms(30);
                    (w, a, b)
                })
                .save_as_text(&args[2])?;
        }
        Some("slow-wordfreq") => {
            slow_counts(ctx, &args[1])?
                .map(|(_, n): (String, u64)| (n, 1u64))
                .reduce_by_key(|a, b| a + b)
                .save_as_text(&args[2])?;
        }
        Some("spin-in-task") => hostile(ctx, &args[1], |l| {
            let mut x = l.len() as u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })?,
        Some("alloc-in-task") => hostile(ctx, &args[1], |l| {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![l.len() as u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        })?,
        Some("recurse-in-task") => hostile(ctx, &args[1], |l| {
            fn down(n: u64, pad: [u64; 16]) -> u64 {
                if std::hint::black_box(pad)[0] == u64::MAX {
                    return 0;
                }
                down(n + 1, [n; 16]) + 1
            }
            down(l.len() as u64, [0; 16]) as usize
        })?,
        Some("unreachable-in-task") => hostile(ctx, &args[1], |l| {
            if std::hint::black_box(true) {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                std::process::abort();
            }
            l.len()
        })?,
        Some("divide-by-zero") => hostile(ctx, &args[1], |l| {
            let zero = std::hint::black_box(l.len() - l.len());
            l.len() / zero
        })?,
        Some("read-passwd") => hostile(ctx, &args[1], |_| {
            match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => panic!("read /etc/passwd: {} bytes", s.len()),
                Err(e) => panic!("could not read /etc/passwd: {e}"),
            }
        })?,
        Some("open-socket") => hostile(ctx, &args[1], |_| {
            match std::net::TcpStream::connect("127.0.0.1:22") {
                Ok(_) => panic!("connected to 127.0.0.1:22"),
                Err(e) => panic!("could not open a socket: {e}"),
            }
        })?,
        Some("huge-output") => {
            ctx.text_file(&args[1])?
                .flat_map(|l: String| vec![l.repeat(10_000); l.len().max(1)])
                .save_as_text(&args[2])?;
        }
        Some("spin-in-main") => {
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3));
            }
        }
        Some("straggler") => {
            ctx.text_file(&args[1])?
                .flat_map(|line: String| {
                    if flint::task_context().is_some_and(|t| t.executor == 1) {
                        sleep_ms(200);
                    }
                    words(line)
                })
                .map(|w: String| (w, 1u64))
                .reduce_by_key(|a, b| a + b)
                .save_as_text(&args[2])?;
        }
        Some("many-partitions") => {
            let n = ctx
                .range(0, 100, 2)?
                .map(|x: i64| (x % 10, x))
                .reduce_by_key(|a, b| a + b)
                .with_partitions(4_000_000_000)
                .count()?;
            println!("count: {n}");
        }
        Some("deep-chain") => {
            let mut d = ctx.range(0, 100, 2)?;
            for _ in 0..3000 {
                d = d.map(|x: i64| x + 1);
            }
            println!("count: {}", d.count()?);
        }
        Some("union-doubling") => {
            let mut d = ctx.range(0, 100, 2)?;
            for _ in 0..40 {
                d = d.union(&d);
            }
            println!("count: {}", d.count()?);
        }
        Some("glob-bomb") => {
            let pattern = format!("{}/{}{}b", args[1], "a".repeat(60), "*a".repeat(30));
            println!("count: {}", ctx.text_file(&pattern)?.count()?);
        }
        Some("collect-huge") => {
            let rows = ctx
                .text_file(&args[1])?
                .coalesce(1)
                .map(|l: String| {
                    let mut row = " ".repeat(1024);
                    let n = l.len().min(1024);
                    row.replace_range(..n, &l[..n]);
                    row
                })
                .collect()?;
            println!("collected: {}", rows.len());
        }
        Some("broadcast-bomb") => {
            let mb: usize = args[1].parse()?;
            let chunk = vec![7u8; 100 << 20];
            let mut held = Vec::new();
            for _ in 0..mb.div_ceil(100) {
                held.push(ctx.broadcast(&chunk)?);
            }
            println!("broadcasts: {}", held.len());
        }
        other => return Err(Error::msg(format!("unknown scenario {other:?}"))),
    }
    Ok(())
}

/// A flight as the tests' CSV files have it: four of their eleven columns, in another
/// order than the header's, one of them with `NA` holes.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Flight {
    carrier: String,
    distance: i64,
    dep_delay: Option<i64>,
    year: i64,
}

/// Rows with chrono fields, read from CSV text through date formats.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Dated {
    day: chrono::NaiveDate,
    at: Option<chrono::NaiveDateTime>,
    zoned: chrono::DateTime<chrono::FixedOffset>,
}

/// A row type naming a column no file has.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct WithMissing {
    carrier: String,
    no_such_column: i64,
}

/// `io KIND INPUT [OPTION…]`: reads flights and prints per carrier `stats carrier= rows=
/// delay_sum= delay_nulls= distance_sum=` (sorted); `io save FORMAT MODE CODEC COLUMNS
/// INPUT OUTPUT` reads CSV flights and saves them (`-` for the default codec or no
/// partition columns); `io text INPUT` prints `text lines= bytes=`; `io dates INPUT
/// [date=COLUMN@FORMAT…] [drop]` reads [`Dated`] rows and prints `dates rows= days=
/// at_sum= at_nulls= zoned_sum=` (days from the common era, Unix seconds).
fn io(ctx: &mut Context, args: &[String]) -> Result<()> {
    use flint::{Codec, CsvOptions, SaveMode};
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or_else(|| Error::msg("io: too few arguments"))
    };
    let csv_options = |opts: &[String]| {
        let mut o = CsvOptions::default();
        for opt in opts {
            match opt.as_str() {
                "inferred" => o.infer_schema = true,
                "multi-line" => o.multi_line = true,
                "semicolon" => o.delimiter = b';',
                "hash-comments" => o.comment = Some(b'#'),
                "backslash" => o.escape = Some(b'\\'),
                "drop" => o.malformed = flint::Malformed::Drop,
                v if v.starts_with("nulls=") => {
                    o.null_values = v[6..].split('|').map(str::to_string).collect()
                }
                // `date=COLUMN@FORMAT`
                v if v.starts_with("date=") => {
                    if let Some((c, f)) = v[5..].split_once('@') {
                        o.date_formats.push((c.to_string(), f.to_string()));
                    }
                }
                _ => {}
            }
        }
        o
    };
    // `where=COLUMN:OP:VALUE` (OP one of eq ne lt le gt ge null notnull; VALUE an
    // integer, a float, `null`, else text): filter_columns on the source.
    let mut filter: Option<flint::Predicate> = None;
    for a in args.iter().skip(2) {
        let Some(spec) = a.strip_prefix("where=") else {
            continue;
        };
        let mut it = spec.splitn(3, ':');
        let (c, op, v) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let value = if let Ok(i) = v.parse::<i64>() {
            flint::Value::Int(i)
        } else if let Ok(x) = v.parse::<f64>() {
            flint::Value::Float(x)
        } else if v == "null" {
            flint::Value::Null
        } else {
            flint::Value::Text(v.to_string())
        };
        let c = flint::col(c);
        let p = match op {
            "eq" => c.eq(value),
            "ne" => c.not_eq(value),
            "lt" => c.lt(value),
            "le" => c.lt_eq(value),
            "gt" => c.gt(value),
            "ge" => c.gt_eq(value),
            "null" => c.is_null(),
            "notnull" => c.is_not_null(),
            other => return Err(Error::msg(format!("io: no comparison {other}"))),
        };
        filter = Some(match filter {
            Some(f) => f.and(p),
            None => p,
        });
    }
    let kind = arg(0)?;
    let flights = match kind.as_str() {
        "text" => {
            let (lines, bytes) = ctx
                .text_file(&arg(1)?)?
                .map(|l: String| (1u64, l.len() as u64))
                .reduce(|a, b| (a.0 + b.0, a.1 + b.1))?
                .unwrap_or((0, 0));
            println!("text lines={lines} bytes={bytes}");
            return Ok(());
        }
        "dates" => {
            let (mut rows, mut days, mut at_sum, mut at_nulls, mut zoned_sum) = (0, 0, 0, 0, 0);
            for d in ctx
                .csv_with::<Dated>(&arg(1)?, csv_options(&args[2..]))?
                .collect()?
            {
                use chrono::Datelike;
                rows += 1;
                days += i64::from(d.day.num_days_from_ce());
                match d.at {
                    Some(t) => at_sum += t.and_utc().timestamp(),
                    None => at_nulls += 1,
                }
                zoned_sum += d.zoned.timestamp();
            }
            println!(
                "dates rows={rows} days={days} at_sum={at_sum} at_nulls={at_nulls} zoned_sum={zoned_sum}"
            );
            return Ok(());
        }
        // The same `stats` lines through a frame's columnar group-by, of Parquet
        // (`frame`) or CSV (`frame-csv`, its types inferred).
        "frame" | "frame-csv" => {
            #[derive(serde::Serialize, serde::Deserialize)]
            struct CarrierStats {
                carrier: String,
                rows: i64,
                delay_sum: Option<i64>,
                delays: i64,
                distance_sum: i64,
                year_sum: i64,
            }
            use flint::Agg;
            let frame = match kind.as_str() {
                "frame" => {
                    ctx.parquet_frame(&arg(1)?, &["carrier", "dep_delay", "distance", "year"])?
                }
                _ => ctx.csv_frame(&arg(1)?, csv_options(&args[2..]))?,
            };
            let mut stats = frame
                .group_by(["carrier"])
                .agg([
                    Agg::count().alias("rows"),
                    Agg::sum("dep_delay").alias("delay_sum"),
                    Agg::count_of("dep_delay").alias("delays"),
                    Agg::sum("distance").alias("distance_sum"),
                    Agg::sum("year").alias("year_sum"),
                ])
                .rows::<CarrierStats>()
                .collect()?;
            stats.sort_by(|a, b| a.carrier.cmp(&b.carrier));
            for s in stats {
                println!(
                    "stats carrier={:?} rows={} delay_sum={} delay_nulls={} distance_sum={} year_sum={}",
                    s.carrier,
                    s.rows,
                    s.delay_sum.unwrap_or(0),
                    s.rows - s.delays,
                    s.distance_sum,
                    s.year_sum
                );
            }
            return Ok(());
        }
        "missing" => {
            let n = ctx.csv::<WithMissing>(&arg(1)?)?.count()?;
            println!("read {n}");
            return Ok(());
        }
        "csv" => ctx.csv_with::<Flight>(&arg(1)?, csv_options(&args[2..]))?,
        "json" => ctx.json_lines::<Flight>(&arg(1)?, flint::Malformed::Fail)?,
        "parquet" => ctx.parquet::<Flight>(&arg(1)?)?,
        // `save-slow`: as `save`, a task taking about a second per 20,000 rows, so that
        // a test can kill a process while tasks are writing.
        "save" | "save-slow" => {
            let (format, mode, codec, columns) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?);
            let mut flights = ctx.csv::<Flight>(&arg(5)?)?;
            if kind == "save-slow" {
                flights = flights.map(|f: Flight| {
                    if f.distance % 40 == 0 {
                        sleep_ms(2);
                    }
                    f
                });
            }
            let mut w = flights.write().mode(match mode.as_str() {
                "overwrite" => SaveMode::Overwrite,
                "append" => SaveMode::Append,
                "ignore" => SaveMode::Ignore,
                _ => SaveMode::ErrorIfExists,
            });
            let codec = match codec.as_str() {
                "uncompressed" => Some(Codec::Uncompressed),
                "snappy" => Some(Codec::Snappy),
                "gzip" => Some(Codec::Gzip),
                "zstd" => Some(Codec::Zstd),
                "lz4" => Some(Codec::Lz4),
                "brotli" => Some(Codec::Brotli),
                "bzip2" => Some(Codec::Bzip2),
                _ => None,
            };
            if let Some(c) = codec {
                w = w.compression(c);
            }
            if columns != "-" {
                w = w.partition_by(columns.split(','));
            }
            let out = arg(6)?;
            return match format.as_str() {
                "csv" => w.csv(&out),
                "json" => w.json_lines(&out),
                "parquet" => w.parquet(&out),
                other => Err(Error::msg(format!("io save: no format {other}"))),
            };
        }
        other => return Err(Error::msg(format!("io: no kind {other}"))),
    };
    let flights = match filter {
        Some(f) => flights.filter_columns(f),
        None => flights,
    };
    let mut stats = flights
        .map(|f: Flight| {
            let d = f.dep_delay;
            (
                f.carrier,
                (
                    1u64,
                    d.unwrap_or(0),
                    u64::from(d.is_none()),
                    f.distance,
                    f.year,
                ),
            )
        })
        .reduce_by_key(|a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3, a.4 + b.4))
        .collect()?;
    stats.sort();
    for (c, (rows, delay, nulls, distance, years)) in stats {
        println!(
            "stats carrier={c:?} rows={rows} delay_sum={delay} delay_nulls={nulls} distance_sum={distance} year_sum={years}"
        );
    }
    Ok(())
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

fn words(line: String) -> Vec<String> {
    line.split_ascii_whitespace().map(str::to_owned).collect()
}

fn slow_counts(ctx: &mut Context, input: &str) -> Result<flint::Dataset<(String, u64)>> {
    Ok(ctx
        .text_file(input)?
        .flat_map(|line: String| {
            sleep_ms(20);
            words(line)
        })
        .map(|w: String| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .map(|kv: (String, u64)| {
            sleep_ms(30);
            kv
        }))
}

/// A count over `input` whose map runs `f` on each line.
fn hostile<F: Fn(String) -> usize + Copy + 'static>(
    ctx: &mut Context,
    input: &str,
    f: F,
) -> Result<()> {
    let n = ctx.text_file(input)?.map(f).count()?;
    println!("lines: {n}");
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Rec {
    id: i64,
    name: String,
    score: f64,
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn operators(ctx: &mut Context, dir: &str) -> Result<()> {
    use flint::{CsvOptions, Malformed};
    let xs = ctx.range(0, 1000, 4)?;
    println!("count: {}", xs.count()?);
    println!("reduce: {:?}", xs.reduce(|a, b| a + b)?);
    println!("fold: {}", xs.fold(0, |a, b| a + b)?);
    let t = 900i64;
    println!(
        "filter_with: {}",
        xs.filter_with(&t, |t: &i64, x: &i64| x >= t).count()?
    );
    println!(
        "map_with: {:?}",
        xs.map_with(&3i64, |m: &i64, x: i64| x * m).take(3)?
    );
    let extra = ctx.parallelize(vec![5i64, 6, 7], 2)?;
    let both = xs.union(&extra);
    println!("union: {}", both.count()?);
    let lens = both
        .coalesce(2)
        .map_partitions(|rows: flint::Partition<i64>| [rows.count() as u64])
        .collect()?;
    println!("coalesce: {:?}", sorted(lens));
    let a = xs.sample(0.1, 7).count()?;
    let b = xs.sample(0.1, 7).count()?;
    println!("sample: {a} {b}");
    println!("distinct: {}", xs.map(|x: i64| x % 37).distinct().count()?);
    let shuffled = xs.map(|x: i64| (x * 7919) % 1000);
    let desc = shuffled.sort_by_into(|x: &i64| *x, false, Some(3))?;
    let v = desc.collect()?;
    println!(
        "sort_desc: {}",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("take: {:?}", xs.take(3)?);
    println!("first: {:?}", xs.first()?);
    println!("top: {:?}", shuffled.top(3, |x: &i64| *x)?);
    let cbv = xs.map(|x: i64| x % 3).count_by_value()?;
    println!("count_by_value: {:?}", sorted(cbv.into_iter().collect()));
    let pairs = xs.map(|x: i64| (x % 10, x));
    let agg = pairs
        .aggregate_by_key(
            (0i64, 0u64),
            |(s, n): (i64, u64), v: i64| (s + v, n + 1),
            |a: (i64, u64), b: (i64, u64)| (a.0 + b.0, a.1 + b.1),
        )
        .collect()?;
    println!("aggregate_by_key: {:?}", sorted(agg));
    let groups = pairs
        .group_by_key()
        .map_values(|v: Vec<i64>| v.len() as u64)
        .collect()?;
    println!("group_by_key: {:?}", sorted(groups));
    let cbk = xs.key_by(|x: &i64| x % 2).count_by_key()?;
    println!("count_by_key: {:?}", sorted(cbk.into_iter().collect()));
    let left = ctx.parallelize((0..20i64).map(|k| (k, k * 2)).collect(), 3)?;
    let right = ctx.parallelize((0..15i64).map(|k| (k, format!("v{k}"))).collect(), 2)?;
    println!("join: {:?}", sorted(left.join(&right).collect()?));
    println!(
        "left_outer_join: {:?}",
        sorted(left.left_outer_join(&right).collect()?)
    );
    println!(
        "right_outer_join: {}",
        right.right_outer_join(&left).count()?
    );
    println!(
        "full_outer_join: {:?}",
        sorted(left.full_outer_join(&right).keys().collect()?)
    );
    // Values on both sides, and keys (15..20) that only the right side has.
    println!(
        "full_outer_join_values: {:?}",
        sorted(right.full_outer_join(&left).collect()?)
    );
    println!(
        "cogroup: {:?}",
        sorted(
            left.cogroup(&right)
                .map(|(k, (a, b)): (i64, (Vec<i64>, Vec<String>))| (k, a.len(), b.len()))
                .collect()?
        )
    );
    let lens = pairs
        .partition_by(3)
        .map_partitions(|rows: flint::Partition<(i64, i64)>| {
            let mut keys: Vec<i64> = rows.map(|r| r.0).collect();
            keys.sort();
            keys.dedup();
            [keys]
        })
        .collect()?;
    println!("partition_by: {:?}", sorted(lens));
    let lens = xs
        .repartition(5)
        .map_partitions(|rows: flint::Partition<i64>| [rows.count() as u64])
        .collect()?;
    println!("repartition: {:?}", sorted(lens));
    let lens = pairs
        .reduce_by_key(|a: i64, b: i64| a + b)
        .with_partitions(4)
        .map_partitions(|rows: flint::Partition<(i64, i64)>| [rows.count() as u64])
        .collect()?;
    println!("with_partitions: {}", lens.len());
    println!(
        "flat_map_with: {}",
        xs.flat_map_with(&2usize, |n: &usize, x: i64| vec![x; *n])
            .count()?
    );

    let recs = xs.map(|x: i64| Rec {
        id: x,
        name: format!("n{x}"),
        score: x as f64 / 2.0,
    });
    let sum = |d: flint::Dataset<Rec>| -> Result<(u64, i64, f64)> {
        let v = d.collect()?;
        Ok((
            v.len() as u64,
            v.iter().map(|r| r.id).sum(),
            v.iter().map(|r| r.score).sum(),
        ))
    };
    let json = format!("{dir}/json");
    recs.save_as_json_lines(&json)?;
    println!(
        "json_lines: {:?}",
        sum(ctx.json_lines::<Rec>(&json, Malformed::Fail)?)?
    );
    let arrow = format!("{dir}/arrow");
    recs.save_as_arrow(&arrow)?;
    println!("arrow_ipc: {:?}", sum(ctx.arrow_ipc::<Rec>(&arrow)?)?);
    let csv = format!("{dir}/csv");
    recs.save_as_csv(&csv)?;
    println!(
        "csv: {:?}",
        sum(ctx.csv::<Rec>(&format!("{csv}/part-*.csv"))?)?
    );
    let inferred = CsvOptions {
        infer_schema: true,
        ..Default::default()
    };
    println!(
        "csv_inferred: {:?}",
        sum(ctx.csv_with::<Rec>(&csv, inferred)?)?
    );
    let pq = format!("{dir}/parquet");
    recs.save_as_parquet(&pq)?;
    println!("parquet: {:?}", sum(ctx.parquet::<Rec>(&pq)?)?);
    Ok(())
}

/// A bijection of u64 (splitmix64's finalizer): distinct inputs, shuffled order.
fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `frame-join L R KEY DIR`: see the crate's docs.
fn frame_join(ctx: &mut Context, args: &[String]) -> Result<()> {
    use flint::{Agg, col};
    let [l, r, key, dir] = args else {
        return Err(Error::msg("usage: frame-join L R KEY DIR"));
    };
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| Error::msg("L and R are numbers"))
    };
    let (l, r) = (number(l)?, number(r)?);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Left {
        k: Option<i64>,
        name: Option<String>,
        a: i64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Right {
        k: i32,
        name: String,
        b: i64,
    }
    let (left, right) = (format!("{dir}/left"), format!("{dir}/right"));
    ctx.range(0, l, 4)?
        .map(|x: i64| {
            let k = (x % 7 != 0).then_some(x % 100);
            Left {
                k,
                name: k.map(|k| format!("n{k}")),
                a: x,
            }
        })
        .save_as_parquet(&left)?;
    ctx.range(0, r, 3)?
        .map(|x: i64| Right {
            k: (x % 50) as i32,
            name: format!("n{}", x % 50),
            b: x,
        })
        .save_as_parquet(&right)?;
    let joined = ctx
        .parquet_frame(&left, &[key.as_str(), "a"])?
        .join(
            &ctx.parquet_frame(&right, &[key.as_str(), "b"])?,
            [key.as_str()],
        )
        .with_column("x", col("a") * col("b") + 1)
        .group_by([key.as_str()])
        .agg([
            Agg::count().alias("n"),
            Agg::sum("x").alias("sum"),
            Agg::max("b").alias("max_b"),
        ]);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct ByK {
        k: i64,
        n: i64,
        sum: i64,
        max_b: i64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct ByName {
        name: String,
        n: i64,
        sum: i64,
        max_b: i64,
    }
    let mut rows: Vec<(i64, i64, i64, i64)> = if key == "k" {
        joined
            .rows::<ByK>()
            .map(|g: ByK| (g.k, g.n, g.sum, g.max_b))
            .collect()?
    } else {
        joined
            .rows::<ByName>()
            .map(|g: ByName| (g.name[1..].parse().unwrap_or(-1), g.n, g.sum, g.max_b))
            .collect()?
    };
    rows.sort();
    for (k, n, sum, max_b) in rows {
        println!("frame-join: key={k} n={n} sum={sum} max_b={max_b}");
    }
    Ok(())
}
