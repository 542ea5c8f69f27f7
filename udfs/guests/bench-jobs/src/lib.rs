//! The peers' jobs (Spark, DuckDB and Polars run the same ones on the same files; see
//! `flint-bench --suite peers`), written as a Flint user would: `JOB INPUT... OUTPUT`.
//! - `aggkey FACTS OUTPUT`: per key, the sum of `amount` and the row count
//!   (`key\tsum\tcount` lines).
//! - `aggcat FACTS OUTPUT`: per category, the sum of `amount` (`category\tsum`).
//! - `join FACTS DIM OUTPUT`: facts joined with dim on `key`, then per region the rows,
//!   the sum of `amount` and the sum of `amount * weight` (`region\tcount\tsum\tweighted`).
//!
//! FACTS and DIM are Parquet (or CSV when the path ends in `.csv`). The aggregations of
//! Parquet run as a frame's columnar `group_by` (as a Spark user writes them with
//! DataFrames); `aggkey-rows` and `aggcat-rows` are the same jobs through typed rows and
//! `reduce_by_key`, as are those of CSV (`csv_frame` reads every column of the file: the
//! typed rows parse only the row type's, and were faster on the peers' facts.csv, 2.6 s
//! against 2.9). The join of Parquet is a frame's join (broadcast: the dimension is
//! small), a computed column and a group-by; `join-rows` is the same through typed rows.
//! The word count is the `wordcount` example itself.

use flint::{Agg, Context, Dataset, Error, Result, Str, col};
use serde::{Deserialize, Serialize};

/// The columns `aggcat` reads (only those are decoded: Parquet projection).
#[derive(Serialize, Deserialize)]
struct CategoryAmount {
    category: Str,
    amount: f64,
}

#[derive(Serialize, Deserialize)]
struct KeyAmount {
    key: i64,
    amount: f64,
}

/// A key's sum and count, as `aggkey`'s group-by makes them.
#[derive(Serialize, Deserialize)]
struct KeySum {
    key: i64,
    sum: f64,
    n: i64,
}

/// A category's sum, as `aggcat`'s group-by makes it.
#[derive(Serialize, Deserialize)]
struct CategorySum {
    category: Str,
    sum: f64,
}

/// A region's row count and sums, as `join`'s group-by makes them.
#[derive(Serialize, Deserialize)]
struct RegionSum {
    region: Str,
    n: i64,
    sum: f64,
    weighted: f64,
}

#[derive(Serialize, Deserialize)]
struct Dim {
    key: i64,
    region: Str,
    weight: i64,
}

fn table<T: flint::Data>(ctx: &mut Context, path: &str) -> Result<Dataset<T>> {
    if path.ends_with(".csv") {
        ctx.csv::<T>(path)
    } else {
        ctx.parquet::<T>(path)
    }
}

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let args = ctx.all_args().to_vec();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["aggkey", facts, out] if !facts.ends_with(".csv") => ctx
            .parquet_frame(facts, &["key", "amount"])?
            .group_by(["key"])
            .agg([Agg::sum("amount").alias("sum"), Agg::count().alias("n")])
            .rows::<KeySum>()
            .map(|r: KeySum| (r.key, r.sum, r.n))
            .save_as_text(out),
        ["aggcat", facts, out] if !facts.ends_with(".csv") => ctx
            .parquet_frame(facts, &["category", "amount"])?
            .group_by(["category"])
            .agg([Agg::sum("amount").alias("sum")])
            .rows::<CategorySum>()
            .map(|r: CategorySum| (r.category, r.sum))
            .save_as_text(out),
        ["aggkey" | "aggkey-rows", facts, out] => table::<KeyAmount>(ctx, facts)?
            .map(|f: KeyAmount| (f.key, (f.amount, 1u64)))
            .reduce_by_key(|a: (f64, u64), b: (f64, u64)| (a.0 + b.0, a.1 + b.1))
            .map(|(k, (sum, n)): (i64, (f64, u64))| (k, sum, n))
            .save_as_text(out),
        ["aggcat" | "aggcat-rows", facts, out] => table::<CategoryAmount>(ctx, facts)?
            .map(|f: CategoryAmount| (f.category, f.amount))
            .reduce_by_key(|a: f64, b: f64| a + b)
            .save_as_text(out),
        ["join", facts, dim, out] if !facts.ends_with(".csv") && !dim.ends_with(".csv") => {
            let dim = ctx.parquet_frame(dim, &["key", "region", "weight"])?;
            ctx.parquet_frame(facts, &["key", "amount"])?
                .join(&dim, ["key"])
                .with_column("weighted", col("amount") * col("weight"))
                .group_by(["region"])
                .agg([
                    Agg::count().alias("n"),
                    Agg::sum("amount").alias("sum"),
                    Agg::sum("weighted").alias("weighted"),
                ])
                .rows::<RegionSum>()
                .map(|r: RegionSum| (r.region, r.n, r.sum, r.weighted))
                .save_as_text(out)
        }
        ["join" | "join-rows", facts, dim, out] => {
            let facts = table::<KeyAmount>(ctx, facts)?.map(|f: KeyAmount| (f.key, f.amount));
            let dim = table::<Dim>(ctx, dim)?.map(|d: Dim| (d.key, (d.region, d.weight)));
            facts
                .join(&dim)
                .map(
                    |(_, (amount, (region, weight))): (i64, (f64, (Str, i64)))| {
                        (region, (1u64, amount, amount * weight as f64))
                    },
                )
                .reduce_by_key(|a: (u64, f64, f64), b: (u64, f64, f64)| {
                    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
                })
                .map(|(r, (n, s, w)): (Str, (u64, f64, f64))| (r, n, s, w))
                .save_as_text(out)
        }
        _ => Err(Error::msg(
            "usage: aggkey[-rows] FACTS OUT | aggcat[-rows] FACTS OUT | join[-rows] FACTS DIM OUT",
        )),
    }
}
