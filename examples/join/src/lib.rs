//! A two-table join: `join ORDERS CUSTOMERS OUTPUT` joins orders with their customers
//! (a left outer join: orders of unknown customers count under `unknown`) and writes the
//! revenue and order count per country as CSV.

use flint::{Context, Result, Str};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub order_id: u64,
    pub customer_id: u64,
    pub amount: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: u64,
    pub name: Str,
    pub country: Str,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountryRevenue {
    pub country: String,
    pub orders: u64,
    pub revenue: f64,
}

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [orders, customers, output] = ctx.args()?;
    let orders = ctx
        .csv::<Order>(&orders)?
        .map(|o: Order| (o.customer_id, o.amount));
    let countries = ctx
        .csv::<Customer>(&customers)?
        .map(|c: Customer| (c.customer_id, c.country));
    orders
        .left_outer_join(&countries)
        .map(|(_, (amount, country)): (u64, (f64, Option<Str>))| {
            (country.unwrap_or_else(|| "unknown".into()), (1u64, amount))
        })
        .reduce_by_key(|a: (u64, f64), b: (u64, f64)| (a.0 + b.0, a.1 + b.1))
        .map(
            |(country, (orders, revenue)): (Str, (u64, f64))| CountryRevenue {
                country: country.into(),
                orders,
                revenue,
            },
        )
        .save_as_csv(&output)
}
