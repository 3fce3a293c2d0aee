//! Canonical JSON, the form of every audit entry and payload that is hashed.
//!
//! Why not `serde_json::to_string`: the hash must be reproducible from a stored entry by any
//! implementation, years later. The canonical form is JSON in the spirit of RFC 8785: object
//! keys sorted by their UTF-8 bytes, no whitespace, strings escaped minimally (`\"`, `\\`,
//! `\b \f \n \r \t`, other control characters as `\u00xx`, everything else raw UTF-8), and
//! integers only. Payloads are held as [`Json`] values; [`to_json`] converts any
//! `Serialize` type, recording `u128`/`i128` (FLOP totals) and floats as decimal **strings**:
//! common JSON libraries read big integers and floats back as doubles, which would change a
//! stored FLOP total or a float's last digit and break the chain on re-verification.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

/// A JSON value with integers only (see the module docs for why).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Json {
    /// `null`.
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer (non-negative ones are [`Json::UInt`], so a value has one form).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object; keys are kept sorted.
    Object(BTreeMap<String, Json>),
}

impl Json {
    pub(super) fn int(v: i128) -> Json {
        if let Ok(u) = u64::try_from(v) {
            Json::UInt(u)
        } else if let Ok(i) = i64::try_from(v) {
            Json::Int(i)
        } else {
            Json::Str(v.to_string())
        }
    }

    /// The field `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(m) => m.get(key),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The canonical JSON text of this value.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        write_canonical(self, &mut out);
        out
    }
}

fn write_canonical(v: &Json, out: &mut String) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Json::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Json::Str(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            // BTreeMap<String, _> iterates in byte order of the UTF-8 keys.
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Int(i) => s.serialize_i64(*i),
            Json::UInt(u) => s.serialize_u64(*u),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::int(i128::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::UInt(v))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Json, E> {
                Ok(Json::int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Json, E> {
                Ok(i128::try_from(v).map_or_else(|_| Json::Str(v.to_string()), Json::int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                // Never written by `to_json`; kept as text so verification reports a mismatch
                // rather than failing to read the log.
                Ok(Json::Str(float_text(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Json, D2::Error> {
                Json::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((k, v)) = a.next_entry::<String, Json>()? {
                    map.insert(k, v);
                }
                Ok(Json::Object(map))
            }
        }
        d.deserialize_any(V)
    }
}

fn float_text(v: f64) -> String {
    // Rust prints the shortest decimal that reads back as the same double.
    format!("{v}")
}

/// Why a value could not be turned into a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A map key that is not a string, integer, bool, char or unit variant.
    #[error("audit payload map keys must be strings (or integers, bools, unit variants)")]
    KeyNotString,
    /// The value's own `Serialize` implementation failed.
    #[error("audit payload could not be serialized: {0}")]
    Custom(String),
}

impl ser::Error for PayloadError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PayloadError::Custom(msg.to_string())
    }
}

/// Converts any serializable value into a payload. `u128`/`i128` outside the 64-bit ranges and
/// all floats become decimal strings; unit variants become their name; other enum variants an
/// object `{variant: content}` (internally or adjacently tagged enums keep their own shape).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Json, PayloadError> {
    value.serialize(ValueSerializer)
}

struct ValueSerializer;

/// Collects a sequence; `variant` wraps it as `{variant: [...]}`.
struct SeqSer {
    items: Vec<Json>,
    variant: Option<&'static str>,
}

/// Collects a map or struct; `variant` wraps it as `{variant: {...}}`.
struct MapSer {
    map: BTreeMap<String, Json>,
    key: Option<String>,
    variant: Option<&'static str>,
}

fn wrap(variant: Option<&'static str>, v: Json) -> Json {
    match variant {
        Some(name) => Json::Object(BTreeMap::from([(name.to_string(), v)])),
        None => v,
    }
}

impl Serializer for ValueSerializer {
    type Ok = Json;
    type Error = PayloadError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = SeqSer;
    type SerializeMap = MapSer;
    type SerializeStruct = MapSer;
    type SerializeStructVariant = MapSer;

    fn serialize_bool(self, v: bool) -> Result<Json, PayloadError> {
        Ok(Json::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Json, PayloadError> {
        Ok(Json::int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Json, PayloadError> {
        Ok(Json::int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Json, PayloadError> {
        Ok(Json::int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Json, PayloadError> {
        Ok(Json::int(v.into()))
    }
    fn serialize_i128(self, v: i128) -> Result<Json, PayloadError> {
        Ok(Json::Str(v.to_string()))
    }
    fn serialize_u8(self, v: u8) -> Result<Json, PayloadError> {
        Ok(Json::UInt(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Json, PayloadError> {
        Ok(Json::UInt(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Json, PayloadError> {
        Ok(Json::UInt(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Json, PayloadError> {
        Ok(Json::UInt(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Json, PayloadError> {
        // Always a string, so a FLOP field has one JSON type whatever its size.
        Ok(Json::Str(v.to_string()))
    }
    fn serialize_f32(self, v: f32) -> Result<Json, PayloadError> {
        Ok(Json::Str(format!("{v}")))
    }
    fn serialize_f64(self, v: f64) -> Result<Json, PayloadError> {
        Ok(Json::Str(float_text(v)))
    }
    fn serialize_char(self, v: char) -> Result<Json, PayloadError> {
        Ok(Json::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Json, PayloadError> {
        Ok(Json::Str(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Json, PayloadError> {
        Ok(Json::Array(
            v.iter().map(|b| Json::UInt(u64::from(*b))).collect(),
        ))
    }
    fn serialize_none(self) -> Result<Json, PayloadError> {
        Ok(Json::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Json, PayloadError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Json, PayloadError> {
        Ok(Json::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Json, PayloadError> {
        Ok(Json::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Json, PayloadError> {
        Ok(Json::Str(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Json, PayloadError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Json, PayloadError> {
        Ok(wrap(Some(variant), v.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer, PayloadError> {
        Ok(SeqSer {
            items: Vec::with_capacity(len.unwrap_or(0)),
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSer, PayloadError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqSer, PayloadError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSer, PayloadError> {
        Ok(SeqSer {
            items: Vec::with_capacity(len),
            variant: Some(variant),
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapSer, PayloadError> {
        Ok(MapSer {
            map: BTreeMap::new(),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapSer, PayloadError> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<MapSer, PayloadError> {
        Ok(MapSer {
            map: BTreeMap::new(),
            key: None,
            variant: Some(variant),
        })
    }
}

impl ser::SerializeSeq for SeqSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PayloadError> {
        self.items.push(to_json(v)?);
        Ok(())
    }
    fn end(self) -> Result<Json, PayloadError> {
        Ok(wrap(self.variant, Json::Array(self.items)))
    }
}

impl ser::SerializeTuple for SeqSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PayloadError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Json, PayloadError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PayloadError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Json, PayloadError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PayloadError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Json, PayloadError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for MapSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), PayloadError> {
        self.key = Some(match to_json(k)? {
            Json::Str(s) => s,
            Json::Int(i) => i.to_string(),
            Json::UInt(u) => u.to_string(),
            Json::Bool(b) => b.to_string(),
            _ => return Err(PayloadError::KeyNotString),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PayloadError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| PayloadError::Custom("map value without a key".into()))?;
        self.map.insert(key, to_json(v)?);
        Ok(())
    }
    fn end(self) -> Result<Json, PayloadError> {
        Ok(wrap(self.variant, Json::Object(self.map)))
    }
}

impl ser::SerializeStruct for MapSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), PayloadError> {
        self.map.insert(key.to_string(), to_json(v)?);
        Ok(())
    }
    fn end(self) -> Result<Json, PayloadError> {
        ser::SerializeMap::end(self)
    }
}

impl ser::SerializeStructVariant for MapSer {
    type Ok = Json;
    type Error = PayloadError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), PayloadError> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<Json, PayloadError> {
        ser::SerializeMap::end(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::units::{FlopTotal, Method};

    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case", tag = "kind")]
    pub(crate) enum Sample {
        Started {
            flop: FlopTotal,
            method: Method,
            note: Option<String>,
            ratio: f64,
        },
    }

    #[test]
    fn canonical_json_is_sorted_compact_and_integer_only() {
        let p = to_json(&Sample::Started {
            flop: FlopTotal::exact(10u128.pow(25)),
            method: Method::UtilMfu,
            note: Some("a\"b\\c\n\u{1}é".into()),
            ratio: 0.1,
        })
        .unwrap();
        assert_eq!(
            p.canonical(),
            r#"{"flop":{"central":"10000000000000000000000000","high":"10000000000000000000000000","low":"10000000000000000000000000"},"kind":"started","method":"util-mfu","note":"a\"b\\c\n\u0001é","ratio":"0.1"}"#
        );
        assert_eq!(to_json(&-5i64).unwrap(), Json::Int(-5));
        assert_eq!(to_json(&5i64).unwrap(), Json::UInt(5));
        assert_eq!(to_json(&(1u8, [2u8])).unwrap().canonical(), "[1,[2]]");
        let mut keyed = BTreeMap::new();
        keyed.insert(3u32, Method::Mfu);
        assert_eq!(to_json(&keyed).unwrap().canonical(), r#"{"3":"mfu"}"#);
        let bad: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
        assert_eq!(to_json(&bad), Err(PayloadError::KeyNotString));
    }
}
