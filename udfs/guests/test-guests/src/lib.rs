//! Test jobs: `SCENARIO ARGS...` picks what the job does.
//! - `count INPUT`: prints the number of lines of INPUT.
//! - `collect-lengths INPUT`: prints the sum of line lengths, computed from `collect`.
//! - `panic-in-task INPUT OUTPUT`: a map panics on a line containing `boom`.
//! - `error-in-main`: `main` returns an error.
//! - `panic-in-main`: `main` panics.

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
        other => return Err(Error::msg(format!("unknown scenario {other:?}"))),
    }
    Ok(())
}
