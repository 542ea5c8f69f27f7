//! k-means: `kmeans POINTS K ITERATIONS OUTPUT` clusters the `x,y` points of a CSV file
//! (with a header) by Lloyd's algorithm, starting from the first K points, and writes
//! the centroids as CSV. Each iteration is one job; the current centroids are broadcast
//! (each executor fetches them once) and read by every task.

use flint::{Broadcast, Context, Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// The index of the centroid nearest to `p` (the first on ties).
pub fn nearest(centroids: &[Point], p: &Point) -> u32 {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d = (c.x - p.x).powi(2) + (c.y - p.y).powi(2);
        if d < best.1 {
            best = (i as u32, d);
        }
    }
    best.0
}

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [points, k, iterations, output] = ctx.args()?;
    let k: usize = k.parse().map_err(|e| Error::from(e).context("K"))?;
    let iterations: u32 = iterations
        .parse()
        .map_err(|e| Error::from(e).context("ITERATIONS"))?;
    let points = ctx.csv::<Point>(&points)?;
    let mut centroids = points.take(k)?;
    if centroids.len() < k {
        return Err(Error::msg(format!(
            "{k} clusters asked of {} points",
            centroids.len()
        )));
    }
    for _ in 0..iterations {
        let current = ctx.broadcast(&centroids)?;
        let sums = points
            .map_with(&current, |c: &Broadcast<Vec<Point>>, p: Point| {
                let c = c.value().expect("the centroids broadcast");
                (nearest(c, &p), (p.x, p.y, 1u64))
            })
            .reduce_by_key(|a: (f64, f64, u64), b: (f64, f64, u64)| {
                (a.0 + b.0, a.1 + b.1, a.2 + b.2)
            })
            .collect()?;
        for (i, (sx, sy, n)) in sums {
            centroids[i as usize] = Point {
                x: sx / n as f64,
                y: sy / n as f64,
            };
        }
    }
    ctx.parallelize(centroids, 1)?.save_as_csv(&output)
}
