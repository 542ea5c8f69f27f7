//! Sales aggregation: `sales csv|parquet INPUT OUTPUT [drop]` reads sales records and
//! writes one row per region (number of sales, units, revenue) as Parquet.
//! `sales convert INPUT.csv OUTPUT` rewrites CSV sales as Parquet. With `drop`, malformed
//! CSV records are dropped and counted instead of failing the job.

use flint::{Context, CsvOptions, Dataset, Error, Malformed, Result, Str};
use serde::{Deserialize, Serialize};

/// One sale, as the CSV header names its columns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sale {
    pub region: Str,
    pub product: Str,
    pub quantity: i64,
    pub price: f64,
}

/// What the aggregation needs of a sale: Parquet reads only these columns, and CSV
/// records are decoded into these fields alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SaleAmount {
    pub region: Str,
    pub quantity: i64,
    pub price: f64,
}

/// The result per region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionTotal {
    pub region: String,
    pub sales: u64,
    pub units: i64,
    pub revenue: f64,
}

fn read<T: flint::Data>(
    ctx: &mut Context,
    format: &str,
    input: &str,
    malformed: Malformed,
) -> Result<Dataset<T>> {
    match format {
        "csv" | "convert" => ctx.csv_with::<T>(
            input,
            CsvOptions {
                malformed,
                ..Default::default()
            },
        ),
        "parquet" => ctx.parquet::<T>(input),
        other => Err(Error::msg(format!(
            "unknown input format {other:?}: csv, parquet or convert"
        ))),
    }
}

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let args = ctx.all_args().to_vec();
    let (format, input, output) = match args.as_slice() {
        [f, i, o] | [f, i, o, _] => (f.as_str(), i.as_str(), o.as_str()),
        _ => {
            return Err(Error::msg(
                "usage: sales csv|parquet|convert INPUT OUTPUT [drop]",
            ));
        }
    };
    let malformed = if args.get(3).is_some_and(|a| a == "drop") {
        Malformed::Drop
    } else {
        Malformed::Fail
    };
    if format == "convert" {
        return read::<Sale>(ctx, format, input, malformed)?.save_as_parquet(output);
    }
    read::<SaleAmount>(ctx, format, input, malformed)?
        .map(|s: SaleAmount| (s.region, (1u64, s.quantity, s.quantity as f64 * s.price)))
        .reduce_by_key(|a: (u64, i64, f64), b: (u64, i64, f64)| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        .map(
            |(region, (sales, units, revenue)): (Str, (u64, i64, f64))| RegionTotal {
                region: region.into(),
                sales,
                units,
                revenue,
            },
        )
        .save_as_parquet(output)
}
