//! Tracing a row type whose fields parse text (chrono's dates and times, UUIDs), which
//! `serde_arrow`'s `from_type` cannot: it hands every text field the empty string, and
//! such a field's `Deserialize` refuses it. [`Probe`] wraps the row type so that each of
//! its fields that reads text is handed a candidate from [`CANDIDATES`] instead; when a
//! field refuses its candidate, [`trace`] tries the next one for that field. The field
//! is then a text column, which the type reads back as it reads its own serde text.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

/// Texts a field is offered in turn: anything for a `String`, then the ISO 8601 forms
/// chrono's types read, then the forms of numbers and UUIDs held as text.
const CANDIDATES: [&str; 7] = [
    "",
    "1970-01-01",
    "1970-01-01T00:00:00",
    "1970-01-01T00:00:00Z",
    "00:00:00",
    "0",
    "00000000-0000-0000-0000-000000000000",
];

thread_local! {
    /// The candidate each field is offered (by index), and the last field that refused
    /// its candidate.
    static STATE: RefCell<(HashMap<&'static str, usize>, Option<&'static str>)> =
        RefCell::new((HashMap::new(), None));
}

/// Runs `attempt` (a trace of `Probe<T>`) until no text field refuses its candidate:
/// at most one retry per field and candidate, so bounded by the type's field count.
pub(crate) fn trace<R, E>(mut attempt: impl FnMut() -> Result<R, E>) -> Result<R, E> {
    STATE.with(|s| *s.borrow_mut() = (HashMap::new(), None));
    let result = loop {
        let r = attempt();
        let refused = STATE.with(|s| s.borrow_mut().1.take());
        match (r, refused) {
            (Err(e), Some(field)) => {
                let more = STATE.with(|s| {
                    let mut s = s.borrow_mut();
                    let i = s.0.entry(field).or_insert(0);
                    *i += 1;
                    *i < CANDIDATES.len()
                });
                if !more {
                    break Err(e);
                }
            }
            (r, _) => break r,
        }
    };
    STATE.with(|s| *s.borrow_mut() = (HashMap::new(), None));
    result
}

fn candidate(field: &'static str) -> &'static str {
    STATE.with(|s| CANDIDATES[s.borrow().0.get(field).copied().unwrap_or(0)])
}

fn refused(field: &'static str) {
    STATE.with(|s| s.borrow_mut().1 = Some(field));
}

/// `T`, deserialized with its top-level fields' text replaced by candidates.
pub(crate) struct Probe<T>(PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Probe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(Top(d)).map(|_| Probe(PhantomData))
    }
}

/// Forwards every `deserialize_*` method but those listed before the macro.
macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method(visitor)
            }
        )*
    };
}

macro_rules! forward_rest {
    () => {
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.deserialize_unit_struct(name, visitor)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.deserialize_newtype_struct(name, visitor)
        }
        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.deserialize_tuple(len, visitor)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.deserialize_tuple_struct(name, len, visitor)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.deserialize_enum(name, variants, visitor)
        }
    };
}

/// The row type's deserializer: its struct's fields get [`Field`] deserializers.
struct Top<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Top<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_struct(name, fields, Struct { visitor, fields })
    }

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }
    forward_rest!();
}

struct Struct<V> {
    visitor: V,
    fields: &'static [&'static str],
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Struct<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(Fields {
            map,
            fields: self.fields,
            next: 0,
        })
    }
}

/// The struct's fields in their declared order, as `serde_arrow`'s tracer visits them.
struct Fields<A> {
    map: A,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Fields<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.map.next_key_seed(seed)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let field = self.fields.get(self.next).copied().unwrap_or("");
        self.next += 1;
        self.map.next_value_seed(FieldSeed { seed, field })
    }
}

struct FieldSeed<S> {
    seed: S,
    field: &'static str,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FieldSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Field(d, self.field))
    }
}

/// One field's deserializer: text is replaced by the field's candidate, through an
/// `Option` too.
struct Field<D>(D, &'static str);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Field<D> {
    type Error = D::Error;

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_str(Text(visitor, self.1))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_string(Text(visitor, self.1))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(Maybe(visitor, self.1))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_seq
        deserialize_map deserialize_identifier deserialize_ignored_any
    }
    forward_rest!();
}

/// Hands the visitor the field's candidate text instead of the tracer's empty string.
struct Text<V>(V, &'static str);

impl<V> Text<V> {
    fn offer<'de, E: de::Error>(self) -> Result<V::Value, E>
    where
        V: Visitor<'de>,
    {
        let field = self.1;
        self.0
            .visit_borrowed_str(candidate(field))
            .inspect_err(|_| refused(field))
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Text<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<V::Value, E> {
        self.offer()
    }

    fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<V::Value, E> {
        self.offer()
    }

    fn visit_string<E: de::Error>(self, _: String) -> Result<V::Value, E> {
        self.offer()
    }
}

/// An `Option` field: its `Some` is deserialized as the field.
struct Maybe<V>(V, &'static str);

impl<'de, V: Visitor<'de>> Visitor<'de> for Maybe<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Field(d, self.1))
    }
}

#[cfg(test)]
mod tests {
    use crate::formats::fields_of;
    use arrow_schema::DataType;

    #[derive(serde::Serialize, serde::Deserialize, Clone)]
    struct Dated {
        id: i64,
        name: String,
        day: chrono::NaiveDate,
        at: Option<chrono::NaiveDateTime>,
        clock: chrono::NaiveTime,
        zoned: chrono::DateTime<chrono::FixedOffset>,
        utc: Option<chrono::DateTime<chrono::Utc>>,
    }

    #[test]
    fn fields_parsed_from_text_trace_as_text_columns() {
        let got: Vec<(String, DataType, bool)> = fields_of::<Dated>()
            .unwrap()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect();
        let want = [
            ("id", DataType::Int64, false),
            ("name", DataType::Utf8, false),
            ("day", DataType::Utf8, false),
            ("at", DataType::Utf8, true),
            ("clock", DataType::Utf8, false),
            ("zoned", DataType::Utf8, false),
            ("utc", DataType::Utf8, true),
        ];
        let want: Vec<(String, DataType, bool)> = want
            .into_iter()
            .map(|(n, t, null)| (n.to_string(), t, null))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rows_with_chrono_fields_round_trip_through_text_columns() {
        use chrono::TimeZone;
        let day = chrono::NaiveDate::from_ymd_opt(2013, 1, 31).unwrap();
        let at = day.and_hms_opt(5, 40, 1).unwrap();
        let offset = chrono::FixedOffset::east_opt(3600).unwrap();
        let rows = vec![
            Dated {
                id: 1,
                name: "a".into(),
                day,
                at: Some(at),
                clock: at.time(),
                zoned: offset.from_local_datetime(&at).unwrap(),
                utc: None,
            },
            Dated {
                id: 2,
                name: "b".into(),
                day: day.succ_opt().unwrap(),
                at: None,
                clock: chrono::NaiveTime::MIN,
                zoned: offset.from_local_datetime(&at).unwrap(),
                utc: Some(chrono::Utc.from_utc_datetime(&at)),
            },
        ];
        let batch =
            crate::formats::render_typed::<Dated>(&[], crate::rows::Rows::new(rows.clone()))
                .unwrap();
        let day_text = batch
            .column_by_name("day")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert_eq!(day_text, "2013-01-31");
        let back: Vec<Dated> = crate::formats::decode_typed::<Dated>(&[], &batch)
            .unwrap()
            .take()
            .unwrap();
        let key = |d: &Dated| (d.id, d.name.clone(), d.day, d.at, d.clock, d.zoned, d.utc);
        assert_eq!(
            back.iter().map(key).collect::<Vec<_>>(),
            rows.iter().map(key).collect::<Vec<_>>()
        );
    }
}
