//! Columns computed from others, a batch at a time ([`Frame::with_column`]):
//! `col("amount") * col("weight")`, as Spark's `withColumn` with arithmetic on columns.
//!
//! [`Frame::with_column`]: crate::Frame::with_column

use crate::filter::Column;
use crate::frame::{column, widen};
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_buffer::{BooleanBuffer, NullBuffer};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// How deeply an expression may nest (it is evaluated by recursion).
pub(crate) const MAX_DEPTH: usize = 64;

/// A number computed per row from a batch's columns: a column ([`col`](crate::col)), an
/// integer or float literal, or `+ - * /` of two. Integers stay integers (`Int64`; an
/// overflow is an error naming the row) but for `/`, which is a float division as in
/// Spark; a float on either side makes a float (`Float64`). A null on either side makes
/// null, as does a division by zero.
///
/// ```no_run
/// use flint::{col, Expr};
/// let weighted: Expr = col("amount") * col("weight");
/// let cents = col("amount") * 100;
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Expr(Node);

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Node {
    Column(String),
    Int(i64),
    Float(f64),
    Binary(Box<Node>, BinOp, Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

impl From<Column> for Expr {
    fn from(c: Column) -> Expr {
        Expr(Node::Column(c.0))
    }
}

macro_rules! literal {
    ($($t:ty => $v:ident as $as:ty),*) => {$(
        impl From<$t> for Expr {
            fn from(x: $t) -> Expr {
                Expr(Node::$v(x as $as))
            }
        }
    )*};
}
literal!(i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    u8 => Int as i64, u16 => Int as i64, u32 => Int as i64, f32 => Float as f64,
    f64 => Float as f64);

macro_rules! arithmetic {
    ($($trait:ident $method:ident $op:ident),*) => {$(
        impl<R: Into<Expr>> std::ops::$trait<R> for Expr {
            type Output = Expr;
            fn $method(self, r: R) -> Expr {
                Expr(Node::Binary(Box::new(self.0), BinOp::$op, Box::new(r.into().0)))
            }
        }
        impl<R: Into<Expr>> std::ops::$trait<R> for Column {
            type Output = Expr;
            fn $method(self, r: R) -> Expr {
                Expr::from(self).$method(r)
            }
        }
    )*};
}
arithmetic!(Add add Add, Sub sub Sub, Mul mul Mul, Div div Div);

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn go(n: &Node, f: &mut std::fmt::Formatter<'_>, depth: usize) -> std::fmt::Result {
            match n {
                _ if depth > MAX_DEPTH => f.write_str("…"),
                Node::Column(c) => f.write_str(c),
                Node::Int(i) => write!(f, "{i}"),
                Node::Float(x) => write!(f, "{x:?}"),
                Node::Binary(l, op, r) => {
                    f.write_str("(")?;
                    go(l, f, depth + 1)?;
                    write!(f, " {} ", op.symbol())?;
                    go(r, f, depth + 1)?;
                    f.write_str(")")
                }
            }
        }
        go(&self.0, f, 0)
    }
}

impl Expr {
    /// How deeply it nests (a bare column or literal: 1), counted no further than past
    /// [`MAX_DEPTH`].
    pub(crate) fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(&self.0, 1)];
        while let Some((n, d)) = stack.pop() {
            deepest = deepest.max(d);
            if d > MAX_DEPTH {
                break;
            }
            if let Node::Binary(l, _, r) = n {
                stack.push((l, d + 1));
                stack.push((r, d + 1));
            }
        }
        deepest
    }

    /// The column of `batch`'s rows this computes.
    pub(crate) fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        if self.depth() > MAX_DEPTH {
            return Err(
                Error::msg(format!("an expression nests deeper than {MAX_DEPTH}")).bad_input(),
            );
        }
        let n = batch.num_rows();
        Ok(match eval(&self.0, batch)? {
            Values::Int(v, nulls) => Arc::new(Int64Array::new(v.into_owned().into(), nulls)),
            Values::Float(v, nulls) => Arc::new(Float64Array::new(v.into_owned().into(), nulls)),
            Values::IntLit(i) => Arc::new(Int64Array::from(vec![i; n])),
            Values::FloatLit(x) => Arc::new(Float64Array::from(vec![x; n])),
        })
    }
}

/// A node's values over a batch.
enum Values<'a> {
    Int(Cow<'a, [i64]>, Option<NullBuffer>),
    Float(Cow<'a, [f64]>, Option<NullBuffer>),
    IntLit(i64),
    FloatLit(f64),
}

impl Values<'_> {
    fn nulls(&self) -> Option<&NullBuffer> {
        match self {
            Values::Int(_, n) | Values::Float(_, n) => n.as_ref(),
            _ => None,
        }
    }
}

/// A column's values as numbers.
fn numbers<'a>(name: &str, a: &'a ArrayRef) -> Result<Values<'a>> {
    let nulls = a.logical_nulls();
    Ok(match a.data_type() {
        DataType::Float64 => Values::Float(
            a.as_primitive::<Float64Type>().values().as_ref().into(),
            nulls,
        ),
        DataType::Float32 => Values::Float(
            a.as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>()
                .into(),
            nulls,
        ),
        DataType::UInt64 => {
            let v = a.as_primitive::<UInt64Type>().values();
            let mut out = Vec::with_capacity(v.len());
            for (i, &x) in v.iter().enumerate() {
                match i64::try_from(x) {
                    Ok(x) => out.push(x),
                    Err(_) if nulls.as_ref().is_some_and(|n| n.is_null(i)) => out.push(0),
                    Err(_) => {
                        return Err(Error::msg(format!(
                            "column `{name}` (row {i} of the batch): {x} does not fit a 64-bit signed integer"
                        ))
                        .bad_input());
                    }
                }
            }
            Values::Int(out.into(), nulls)
        }
        t if crate::frame::int_key(t) => Values::Int(widen(a), nulls),
        other => {
            return Err(Error::msg(format!(
                "column `{name}` has type {other}: an expression computes with number columns"
            ))
            .bad_input());
        }
    })
}

fn eval<'a>(n: &Node, batch: &'a RecordBatch) -> Result<Values<'a>> {
    let (l, op, r) = match n {
        Node::Column(name) => return numbers(name, column(batch, name)?),
        Node::Int(i) => return Ok(Values::IntLit(*i)),
        Node::Float(x) => return Ok(Values::FloatLit(*x)),
        Node::Binary(l, op, r) => (eval(l, batch)?, *op, eval(r, batch)?),
    };
    let rows = batch.num_rows();
    let nulls = NullBuffer::union(l.nulls(), r.nulls());
    let (a, b) = (split(l), split(r));
    if op != BinOp::Div
        && let (Ok(a), Ok(b)) = (&a, &b)
    {
        let out = match op {
            BinOp::Add => int_zip(a, b, rows, nulls.as_ref(), i64::checked_add),
            BinOp::Sub => int_zip(a, b, rows, nulls.as_ref(), i64::checked_sub),
            _ => int_zip(a, b, rows, nulls.as_ref(), i64::checked_mul),
        }
        .map_err(|i| {
            Error::msg(format!(
                "integer overflow in `{}` (row {i} of the batch: {} {} {})",
                Expr(n.clone()),
                a.at(i),
                op.symbol(),
                b.at(i)
            ))
            .bad_input()
        })?;
        return Ok(Values::Int(out.into(), nulls));
    }
    let (a, b) = (floats(a, rows), floats(b, rows));
    let out = match op {
        BinOp::Add => zip(&a, &b, |x, y| x + y),
        BinOp::Sub => zip(&a, &b, |x, y| x - y),
        BinOp::Mul => zip(&a, &b, |x, y| x * y),
        BinOp::Div => zip(&a, &b, |x, y| x / y),
    };
    // A division by zero is null (Spark's without ANSI mode).
    let nulls = if op == BinOp::Div && b.contains(&0.0) {
        let nonzero = BooleanBuffer::collect_bool(rows, |i| b[i] != 0.0);
        NullBuffer::union(nulls.as_ref(), Some(&NullBuffer::new(nonzero)))
    } else {
        nulls
    };
    Ok(Values::Float(out.into(), nulls))
}

/// Values as integers, or else as floats.
fn split(v: Values<'_>) -> std::result::Result<Either<'_, i64>, Either<'_, f64>> {
    match v {
        Values::Int(v, _) => Ok(Either::Many(v)),
        Values::IntLit(i) => Ok(Either::One(i)),
        Values::Float(v, _) => Err(Either::Many(v)),
        Values::FloatLit(x) => Err(Either::One(x)),
    }
}

/// Values as floats: a column's own, else converted (a literal repeated).
fn floats<'a>(
    v: std::result::Result<Either<'a, i64>, Either<'a, f64>>,
    rows: usize,
) -> Cow<'a, [f64]> {
    match v {
        Ok(Either::Many(v)) => v.iter().map(|&x| x as f64).collect::<Vec<_>>().into(),
        Ok(Either::One(i)) => vec![i as f64; rows].into(),
        Err(Either::Many(v)) => v,
        Err(Either::One(x)) => vec![x; rows].into(),
    }
}

/// `f` of each pair of integers, or the first row (not null) where it overflows.
#[inline(always)]
fn int_zip(
    a: &Either<'_, i64>,
    b: &Either<'_, i64>,
    rows: usize,
    nulls: Option<&NullBuffer>,
    f: impl Fn(i64, i64) -> Option<i64>,
) -> std::result::Result<Vec<i64>, usize> {
    let mut out = Vec::with_capacity(rows);
    for i in 0..rows {
        match f(a.at(i), b.at(i)) {
            Some(x) => out.push(x),
            None if nulls.is_some_and(|n| n.is_null(i)) => out.push(0),
            None => return Err(i),
        }
    }
    Ok(out)
}

/// `f` of each pair (one loop per operator: `f` inlines).
#[inline(always)]
fn zip(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// A column's values or one value for every row.
enum Either<'a, T: Clone> {
    Many(Cow<'a, [T]>),
    One(T),
}

impl<T: Copy> Either<'_, T> {
    #[inline(always)]
    fn at(&self, i: usize) -> T {
        match self {
            Either::Many(v) => v[i],
            Either::One(x) => *x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::col;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Int32Array, StringArray};

    fn rows() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
            ),
            ("b", Arc::new(Int64Array::from(vec![10, 20, 0, 40]))),
            ("x", Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, 3.5]))),
            ("s", Arc::new(StringArray::from(vec!["p", "q", "r", "s"]))),
        ])
        .unwrap()
    }

    fn ints(e: Expr) -> Vec<Option<i64>> {
        let a = e.eval(&rows()).unwrap();
        a.as_primitive::<Int64Type>().iter().collect()
    }

    fn floats(e: Expr) -> Vec<Option<f64>> {
        let a = e.eval(&rows()).unwrap();
        a.as_primitive::<Float64Type>().iter().collect()
    }

    #[test]
    fn integers_stay_integers_and_nulls_stay_null() {
        assert_eq!(
            ints(col("a") * col("b") + 1),
            vec![Some(11), None, Some(1), Some(161)]
        );
        assert_eq!(
            ints(col("b") - 5),
            vec![Some(5), Some(15), Some(-5), Some(35)]
        );
    }

    #[test]
    fn a_float_or_a_division_makes_floats_and_a_zero_divisor_null() {
        assert_eq!(
            floats(col("x") * col("b")),
            vec![Some(5.0), Some(30.0), Some(0.0), Some(140.0)]
        );
        assert_eq!(
            floats(col("b") / col("a")),
            vec![Some(10.0), None, Some(0.0), Some(10.0)]
        );
        assert_eq!(
            floats(col("a") / col("b")),
            vec![Some(0.1), None, None, Some(0.1)]
        );
        assert_eq!(floats(Expr::from(2) * 0.25), vec![Some(0.5); 4]);
    }

    #[test]
    fn an_overflow_a_text_column_or_a_deep_nesting_is_an_error() {
        let err = (col("b") * i64::MAX).eval(&rows()).unwrap_err();
        assert!(
            err.to_string()
                .contains("integer overflow in `(b * 9223372036854775807)` (row 0 of the batch"),
            "{err}"
        );
        let err = (col("s") + 1).eval(&rows()).unwrap_err();
        assert!(
            err.to_string().contains("column `s` has type Utf8"),
            "{err}"
        );
        let mut deep = Expr::from(col("b"));
        for _ in 0..MAX_DEPTH {
            deep = deep + 1;
        }
        assert_eq!(deep.depth(), MAX_DEPTH + 1);
        assert!(deep.eval(&rows()).is_err());
    }
}
