//! Top-k words: `topk INPUT K OUTPUT` counts words, sorts them by count (largest first,
//! then by word) with a global `sort_by`, writes every `word<TAB>count` in that order
//! (part files in order), and prints the first K.

use flint::{Context, Error, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [input, k, output] = ctx.args()?;
    let k: usize = k.parse().map_err(|e| Error::from(e).context("K"))?;
    let sorted = ctx
        .text_file(&input)?
        .flat_map(|line: String| {
            line.split_ascii_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|w: String| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .sort_by(|(w, n): &(String, u64)| (u64::MAX - n, w.clone()), true)?;
    sorted.save_as_text(&output)?;
    let top = sorted.top(k, |(w, n): &(String, u64)| {
        (*n, std::cmp::Reverse(w.clone()))
    })?;
    for (w, n) in top {
        println!("{w}\t{n}");
    }
    Ok(())
}
