//! Test jobs: `SCENARIO ARGS...` picks what the job does.
//! - `count INPUT`: prints the number of lines of INPUT.
//! - `collect-lengths INPUT`: prints the sum of line lengths, computed from `collect`.
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
//! - `straggler INPUT OUTPUT`: a word count whose map tasks sleep 200 ms per line on
//!   executor 1 only: a slow machine, for speculation.

use flint::{Context, Error, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let args = ctx.all_args().to_vec();
    match args.first().map(String::as_str) {
        Some("count") => {
            let n = ctx.text_file(&args[1])?.count()?;
            println!("lines: {n}");
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
        other => return Err(Error::msg(format!("unknown scenario {other:?}"))),
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
