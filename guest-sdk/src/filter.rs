//! Filters on a source's columns, which the host checks before rows reach the job and
//! uses to skip what cannot pass: a partition directory whose value fails, a Parquet row
//! group whose statistics rule every row out. Spark's predicate pushdown and partition
//! pruning, for [`Dataset::filter_columns`](crate::Dataset::filter_columns).

use crate::bindings::flint::job::types as wit;

/// A column of a source's rows, to compare: `col("year").eq(2013)`.
pub fn col(name: impl Into<String>) -> Column {
    Column(name.into())
}

/// A named column; see [`col`].
#[derive(Clone, Debug)]
pub struct Column(pub(crate) String);

/// A value a column is compared with: integers, floats, text, booleans, or
/// [`Value::Null`]. Text compared with a date or timestamp column is parsed as one
/// (`"2013-01-01"`); a number column compared with a float is compared as floats.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v(x.into())
            }
        }
    )*};
}
value_from!(bool => Bool, i8 => Int, i16 => Int, i32 => Int, i64 => Int, u8 => Int,
    u16 => Int, u32 => Int, f32 => Float, f64 => Float, String => Text, &str => Text);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(x: Option<T>) -> Value {
        x.map_or(Value::Null, Into::into)
    }
}

/// Rows pass when every comparison holds (`and`). As in SQL, a null cell passes only
/// [`Column::is_null`]; comparing with [`Value::Null`] passes nothing.
#[derive(Clone, Debug, Default)]
pub struct Predicate(pub(crate) Vec<wit::ColumnPredicate>);

impl Predicate {
    /// Rows that pass both.
    pub fn and(mut self, other: Predicate) -> Predicate {
        self.0.extend(other.0);
        self
    }
}

impl Column {
    fn cmp(self, op: wit::CompareOp, value: Value) -> Predicate {
        Predicate(vec![wit::ColumnPredicate {
            column: self.0,
            op,
            value: match value {
                Value::Null => wit::Literal::Null,
                Value::Bool(b) => wit::Literal::Boolean(b),
                Value::Int(i) => wit::Literal::Int(i),
                Value::Float(x) => wit::Literal::Float(x),
                Value::Text(t) => wit::Literal::Text(t),
            },
        }])
    }

    pub fn eq(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::Eq, v.into())
    }

    pub fn not_eq(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::NotEq, v.into())
    }

    pub fn lt(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::Lt, v.into())
    }

    pub fn lt_eq(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::LtEq, v.into())
    }

    pub fn gt(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::Gt, v.into())
    }

    pub fn gt_eq(self, v: impl Into<Value>) -> Predicate {
        self.cmp(wit::CompareOp::GtEq, v.into())
    }

    /// Rows whose cell is null (an `Option` field's `None`, a CSV null value).
    pub fn is_null(self) -> Predicate {
        self.cmp(wit::CompareOp::IsNull, Value::Null)
    }

    pub fn is_not_null(self) -> Predicate {
        self.cmp(wit::CompareOp::IsNotNull, Value::Null)
    }
}
