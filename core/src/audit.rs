//! The audit log: an append-only SHA-256 hash chain.
//!
//! Every entry records `{seq, time_ms, actor, kind, payload, prev_hash}` and its `hash`:
//!
//! ```text
//! hash = hex(SHA-256(prev_hash || canonical(entry without its hash)))
//! ```
//!
//! where `prev_hash` is the previous entry's hash as 64 lowercase hex characters (64 zeros for
//! the first entry, [`GENESIS_HASH`]) and `canonical` is the entry as canonical JSON (below).
//! Changing, deleting, inserting or reordering any entry breaks the chain at or right after
//! that entry, and [`verify`] reports the first broken link. (Cutting entries off the *end*
//! leaves a valid shorter chain; [`verify_with_head`] detects it against a head kept
//! elsewhere.) Storage is the collector's business; this module is the pure part.
//!
//! # Canonical JSON
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
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    fn int(v: i128) -> Json {
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

/// What an entry records. Serialized as its kebab-case name; names the engine does not know
/// are kept verbatim as [`AuditKind::Other`], so a log written by a newer version still
/// verifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", from = "String")]
pub enum AuditKind {
    /// A notification clock started.
    ClockStarted,
    /// A fact was added to a clock.
    ClockFact,
    /// An alert changed status, or a reminder or re-notification fell due.
    Alert,
    /// An alert was delivered to a sink (or a delivery failed).
    Delivery,
    /// Someone recorded the notification.
    Acknowledged,
    /// Someone dismissed an alert.
    Dismissed,
    /// The model registry changed (role, base model, plans).
    RegistryChange,
    /// The threshold configuration changed.
    ThresholdConfigChange,
    /// A stage inclusion or exclusion was decided or overridden.
    StagePolicyChange,
    /// A plan was declared or revised in a run's records (the registry's plans are in
    /// [`AuditKind::RegistryChange`]).
    PlanDeclared,
    /// The collector found the chain broken: the fact, recorded once per break, so the log
    /// says from when on it was known not to verify.
    AuditChainBroken,
    /// Any other kind.
    Other(String),
}

impl AuditKind {
    /// The kebab-case name.
    pub fn as_str(&self) -> &str {
        match self {
            AuditKind::ClockStarted => "clock-started",
            AuditKind::ClockFact => "clock-fact",
            AuditKind::Alert => "alert",
            AuditKind::Delivery => "delivery",
            AuditKind::Acknowledged => "acknowledged",
            AuditKind::Dismissed => "dismissed",
            AuditKind::RegistryChange => "registry-change",
            AuditKind::ThresholdConfigChange => "threshold-config-change",
            AuditKind::StagePolicyChange => "stage-policy-change",
            AuditKind::PlanDeclared => "plan-declared",
            AuditKind::AuditChainBroken => "audit-chain-broken",
            AuditKind::Other(s) => s,
        }
    }
}

impl From<AuditKind> for String {
    fn from(k: AuditKind) -> String {
        k.as_str().to_string()
    }
}

impl From<String> for AuditKind {
    fn from(s: String) -> AuditKind {
        match s.as_str() {
            "clock-started" => AuditKind::ClockStarted,
            "clock-fact" => AuditKind::ClockFact,
            "alert" => AuditKind::Alert,
            "delivery" => AuditKind::Delivery,
            "acknowledged" => AuditKind::Acknowledged,
            "dismissed" => AuditKind::Dismissed,
            "registry-change" => AuditKind::RegistryChange,
            "threshold-config-change" => AuditKind::ThresholdConfigChange,
            "stage-policy-change" => AuditKind::StagePolicyChange,
            "plan-declared" => AuditKind::PlanDeclared,
            "audit-chain-broken" => AuditKind::AuditChainBroken,
            _ => AuditKind::Other(s),
        }
    }
}

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When recorded (Unix ms UTC).
    pub time_ms: i64,
    /// Who or what: a user name, or `engine`, `collector`, ….
    pub actor: String,
    /// What kind of record.
    pub kind: AuditKind,
    /// The record itself.
    pub payload: Json,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

impl AuditEntry {
    /// The canonical text of the entry without its hash: what is hashed after `prev_hash`.
    pub fn canonical(&self) -> String {
        Json::Object(BTreeMap::from([
            ("actor".to_string(), Json::Str(self.actor.clone())),
            (
                "kind".to_string(),
                Json::Str(self.kind.as_str().to_string()),
            ),
            ("payload".to_string(), self.payload.clone()),
            ("prev_hash".to_string(), Json::Str(self.prev_hash.clone())),
            ("seq".to_string(), Json::UInt(self.seq)),
            ("time_ms".to_string(), Json::int(i128::from(self.time_ms))),
        ]))
        .canonical()
    }

    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(self.canonical().as_bytes());
        let mut out = String::with_capacity(64);
        for b in h.finalize() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// The end of a chain: what the next entry links to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainHead {
    /// The next entry's `seq` (the number of entries so far).
    pub next_seq: u64,
    /// The last entry's hash ([`GENESIS_HASH`] when empty).
    pub last_hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead::genesis()
    }
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> ChainHead {
        ChainHead {
            next_seq: 0,
            last_hash: GENESIS_HASH.to_string(),
        }
    }

    /// The head after `entry` (to resume appending after a restart).
    pub fn after(entry: &AuditEntry) -> ChainHead {
        ChainHead {
            next_seq: entry.seq + 1,
            last_hash: entry.hash.clone(),
        }
    }

    /// Makes the next entry and advances the head. The caller stores the entry; if storing
    /// fails it must not keep the advanced head (append is all or nothing).
    pub fn append(
        &mut self,
        time_ms: i64,
        actor: &str,
        kind: AuditKind,
        payload: Json,
    ) -> AuditEntry {
        let mut e = AuditEntry {
            seq: self.next_seq,
            time_ms,
            actor: actor.to_string(),
            kind,
            payload,
            prev_hash: self.last_hash.clone(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        *self = ChainHead::after(&e);
        e
    }
}

/// How a link is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The entry's `seq` is not the next number: an entry before it was deleted, or entries
    /// were inserted or reordered.
    #[error(
        "sequence number {found}, expected {expected} (entries deleted, inserted or reordered)"
    )]
    Seq {
        /// The number expected.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The entry does not link to the previous entry's hash: the previous entry was changed
    /// and re-hashed, or the chain was spliced.
    #[error("prev_hash {found} does not match the previous entry's hash {expected}")]
    PrevHash {
        /// The previous entry's hash.
        expected: String,
        /// The `prev_hash` found.
        found: String,
    },
    /// The entry's content does not hash to its recorded hash: it was modified.
    #[error(
        "hash {stored} does not match the content, which hashes to {computed} (entry modified)"
    )]
    Hash {
        /// The hash recorded.
        stored: String,
        /// The hash of the content.
        computed: String,
    },
    /// The chain ends before the expected head: entries were cut off the end.
    #[error("the chain ends at {found} entries, but the head says {expected}")]
    Truncated {
        /// Entries the head accounts for.
        expected: u64,
        /// Entries found.
        found: u64,
    },
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {index}: {reason}")]
pub struct BrokenLink {
    /// Index in the slice given (for a whole chain, equal to the expected `seq`).
    pub index: usize,
    /// How.
    pub reason: LinkError,
}

/// Verifies a whole chain from its first entry. Returns the first broken link.
pub fn verify(entries: &[AuditEntry]) -> Result<(), BrokenLink> {
    verify_segment(entries, &ChainHead::genesis()).map(|_| ())
}

/// Verifies entries that continue from `start` (an exported segment whose predecessor's
/// hash is known), returning the head after them.
pub fn verify_segment(entries: &[AuditEntry], start: &ChainHead) -> Result<ChainHead, BrokenLink> {
    let mut head = start.clone();
    for (index, e) in entries.iter().enumerate() {
        let broken = |reason| Err(BrokenLink { index, reason });
        if e.seq != head.next_seq {
            return broken(LinkError::Seq {
                expected: head.next_seq,
                found: e.seq,
            });
        }
        if e.prev_hash != head.last_hash {
            return broken(LinkError::PrevHash {
                expected: head.last_hash,
                found: e.prev_hash.clone(),
            });
        }
        let computed = e.compute_hash();
        if computed != e.hash {
            return broken(LinkError::Hash {
                stored: e.hash.clone(),
                computed,
            });
        }
        head = ChainHead::after(e);
    }
    Ok(head)
}

/// Verifies a whole chain and that it reaches `expected` (a head kept apart from the log, e.g.
/// in a second file or a published digest), which also detects entries cut off the end.
pub fn verify_with_head(entries: &[AuditEntry], expected: &ChainHead) -> Result<(), BrokenLink> {
    let head = verify_segment(entries, &ChainHead::genesis())?;
    if head.next_seq < expected.next_seq {
        return Err(BrokenLink {
            index: entries.len(),
            reason: LinkError::Truncated {
                expected: expected.next_seq,
                found: head.next_seq,
            },
        });
    }
    if head.next_seq == expected.next_seq && head.last_hash != expected.last_hash {
        return Err(BrokenLink {
            index: entries.len().saturating_sub(1),
            reason: LinkError::Hash {
                stored: expected.last_hash.clone(),
                computed: head.last_hash,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{FlopTotal, Method};

    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case", tag = "kind")]
    enum Sample {
        Started {
            flop: FlopTotal,
            method: Method,
            note: Option<String>,
            ratio: f64,
        },
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut head = ChainHead::genesis();
        (0..n)
            .map(|i| {
                let payload = to_json(&Sample::Started {
                    flop: FlopTotal::exact(21 * 10u128.pow(24) + u128::from(i)),
                    method: Method::GpmTensor,
                    note: (i % 2 == 0).then(|| format!("entry \"{i}\"\n")),
                    ratio: 0.1 + i as f64,
                })
                .unwrap();
                head.append(
                    1_790_000_000_000 + i as i64,
                    "engine",
                    AuditKind::Alert,
                    payload,
                )
            })
            .collect()
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

    #[test]
    fn a_valid_chain_verifies_and_survives_a_json_round_trip() {
        let entries = chain(6);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[0].hash.len(), 64);
        assert_eq!(verify(&entries), Ok(()));
        assert_eq!(verify(&[]), Ok(()));
        // As the collector stores it: JSON lines, read back.
        let lines: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let back: Vec<AuditEntry> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, entries);
        assert_eq!(verify(&back), Ok(()));
        let head = ChainHead::after(entries.last().unwrap());
        assert_eq!(verify_with_head(&entries, &head), Ok(()));
        assert_eq!(
            verify_segment(&entries[2..], &ChainHead::after(&entries[1])),
            Ok(head)
        );
    }

    /// A known answer, so a change to the canonical form or the hash input is caught.
    #[test]
    fn known_hash() {
        let mut head = ChainHead::genesis();
        let e = head.append(0, "alice", AuditKind::Acknowledged, Json::Null);
        assert_eq!(
            e.canonical(),
            format!(
                r#"{{"actor":"alice","kind":"acknowledged","payload":null,"prev_hash":"{GENESIS_HASH}","seq":0,"time_ms":0}}"#
            )
        );
        let mut h = Sha256::new();
        h.update(format!("{GENESIS_HASH}{}", e.canonical()).as_bytes());
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(e.hash, want);
    }

    /// Tampering, table-driven: each row changes a valid chain and names the first broken
    /// link it must produce.
    #[test]
    fn verify_detects_tampering() {
        type Tamper = fn(&mut Vec<AuditEntry>);
        let rows: Vec<(&str, Tamper, usize, &str)> = vec![
            (
                "modified payload",
                |c| c[2].payload = Json::Str("forged".into()),
                2,
                "entry modified",
            ),
            ("modified time", |c| c[3].time_ms += 1, 3, "entry modified"),
            (
                "modified actor",
                |c| c[0].actor = "mallory".into(),
                0,
                "entry modified",
            ),
            (
                "modified and re-hashed",
                |c| {
                    c[2].actor = "mallory".into();
                    c[2].hash = c[2].compute_hash();
                },
                3,
                "does not match the previous entry's hash",
            ),
            (
                "deleted",
                |c| {
                    c.remove(2);
                },
                2,
                "expected 2",
            ),
            (
                "deleted first",
                |c| {
                    c.remove(0);
                },
                0,
                "expected 0",
            ),
            ("reordered", |c| c.swap(1, 4), 1, "reordered"),
            (
                "reordered and renumbered",
                |c| {
                    c.swap(1, 2);
                    c[1].seq = 1;
                    c[2].seq = 2;
                },
                1,
                "does not match the previous entry's hash",
            ),
            (
                "inserted",
                |c| {
                    let mut fake = c[1].clone();
                    fake.payload = Json::Bool(true);
                    c.insert(2, fake);
                },
                2,
                "expected 2",
            ),
        ];
        for (name, tamper, index, why) in rows {
            let mut c = chain(6);
            tamper(&mut c);
            let err = verify(&c).unwrap_err();
            assert_eq!(err.index, index, "{name}: {err}");
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
        // Cutting entries off the end is invisible to the chain alone, not to a kept head.
        let full = chain(6);
        let head = ChainHead::after(full.last().unwrap());
        assert_eq!(verify(&full[..4]), Ok(()));
        let err = verify_with_head(&full[..4], &head).unwrap_err();
        assert!(
            matches!(
                err.reason,
                LinkError::Truncated {
                    expected: 6,
                    found: 4
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn kinds_round_trip_and_keep_unknown_names() {
        for k in [
            AuditKind::ClockStarted,
            AuditKind::ThresholdConfigChange,
            AuditKind::Other("x-new".into()),
        ] {
            assert_eq!(AuditKind::from(String::from(k.clone())), k);
        }
    }
}
