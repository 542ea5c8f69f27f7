//! PageRank: `pagerank LINKS OUTPUT ITERATIONS` reads `src dst` lines and writes
//! `page<TAB>rank` after ITERATIONS rounds (Spark's classic example: rank =
//! 0.15 + 0.85 × the contributions received; pages nobody links to drop out).
//!
//! The adjacency lists are computed once and cached: every iteration's join reads the
//! kept partitions.

use flint::{Context, Error, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [links, output, iterations] = ctx.args()?;
    let iterations: u32 = iterations
        .parse()
        .map_err(|e| Error::from(e).context("ITERATIONS"))?;
    let links = ctx
        .text_file(&links)?
        .flat_map(|line: String| {
            let mut it = line.split_ascii_whitespace();
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                _ => None,
            }
        })
        .distinct()
        .group_by_key()
        .cache();
    let mut ranks = links.map_values(|_: Vec<String>| 1.0f64);
    for _ in 0..iterations {
        let contribs =
            links
                .join(&ranks)
                .flat_map(|(_, (dsts, rank)): (String, (Vec<String>, f64))| {
                    let share = rank / dsts.len() as f64;
                    dsts.into_iter()
                        .map(move |d| (d, share))
                        .collect::<Vec<_>>()
                });
        ranks = contribs
            .reduce_by_key(|a: f64, b: f64| a + b)
            .map_values(|r: f64| 0.15 + 0.85 * r);
    }
    ranks.save_as_text(&output)
}
