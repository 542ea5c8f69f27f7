//! Word count: `wordcount INPUT OUTPUT` writes `word<TAB>count` lines.
//! Tokenizes exactly like `str::split_ascii_whitespace` and keeps case.

use flint::{Context, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [input, output] = ctx.args()?;
    ctx.text_file(&input)?
        .flat_map(|line: String| {
            line.split_ascii_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|w: String| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .save_as_text(&output)?;
    Ok(())
}
