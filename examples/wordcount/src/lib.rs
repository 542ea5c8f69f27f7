//! Word count: `wordcount INPUT OUTPUT` writes `word<TAB>count` lines.
//! Tokenizes exactly like `str::split_ascii_whitespace` and keeps case.
//!
//! The lines are [`Str`]s, which share the bytes the host read: each word is a slice of
//! its line, and the map side of `reduce_by_key` copies a word only the first time it
//! sees it.

use flint::{Context, Result, Str};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [input, output] = ctx.args()?;
    ctx.lines(&input)?
        .flat_map(|line: Str| line.split_ascii_whitespace())
        .map(|w: Str| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .save_as_text(&output)?;
    Ok(())
}
