//! Strict JSON for every body a tier accepts: a key given twice is refused (serde_json keeps
//! the last one, so `{"username":"nobody","username":"Admin"}` would be read as Admin by one
//! reader and as nobody by another), and a typed-parse error names the field it is about.

use crate::error::{ErrorBody, ErrorCode};
use crate::sla::Violation;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Parses `bytes` as JSON, refusing duplicate keys at any depth. The error is a 400
/// `malformed_json`; for a duplicate key it names the key's path.
pub fn value_strict(bytes: &[u8]) -> Result<Value, ErrorBody> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let dup = std::cell::RefCell::new(None);
    let v = Node { path: String::new(), dup: &dup }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match v {
        Ok(v) => Ok(v),
        Err(e) => {
            let (message, violations) = match dup.into_inner() {
                Some(path) => (
                    format!("request body has the key {path} more than once"),
                    vec![Violation { field: path, message: "duplicate key".into() }],
                ),
                None => (format!("request body is not valid JSON: {e}"), Vec::new()),
            };
            Err(ErrorBody { code: ErrorCode::MalformedJson, message, violations })
        }
    }
}

/// Reads `value` as a `T`; a mismatch is a 422 `invalid_field` naming the field's path
/// (`instances[3].cpu_percent`), or the body itself when the path is empty.
pub fn from_value_named<T: DeserializeOwned>(value: Value) -> Result<T, ErrorBody> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path.trim_start_matches('.').to_owned() };
        let message = e.into_inner().to_string();
        ErrorBody {
            code: ErrorCode::InvalidField,
            message: format!("{field}: {message}"),
            violations: vec![Violation { field, message }],
        }
    })
}

/// [`value_strict`], then [`from_value_named`], for a body that is one JSON object (serde
/// would otherwise read an array as the struct's fields in order).
pub fn from_slice_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ErrorBody> {
    let v = value_strict(bytes)?;
    if !v.is_object() {
        return Err(ErrorBody {
            code: ErrorCode::InvalidField,
            message: "body: must be a JSON object".into(),
            violations: vec![Violation { field: "body".into(), message: "must be a JSON object".into() }],
        });
    }
    from_value_named(v)
}

struct Node<'a> {
    path: String,
    dup: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) =
            seq.next_element_seed(Node { path: format!("{}[{}]", self.path, out.len()), dup: self.dup })?
        {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            if out.contains_key(&k) {
                *self.dup.borrow_mut() = Some(path.clone());
                return Err(de::Error::custom(format!("duplicate key {path}")));
            }
            let v = map.next_value_seed(Node { path, dup: self.dup })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_with_their_path() {
        let e = value_strict(br#"{"username":"nobody","username":"Admin","password":"x"}"#).err();
        let e = e.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.code, ErrorCode::MalformedJson);
        assert_eq!(e.violations[0].field, "username");
        let e = value_strict(br#"{"a":[{"b":1},{"b":1,"b":2}]}"#).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.violations[0].field, "a[1].b");
        assert!(value_strict(br#"{"a":{"b":1},"c":{"b":1}}"#).is_ok());
        assert!(value_strict(br#"{"a":1} x"#).is_err(), "trailing data");
    }

    #[test]
    fn typed_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            replicas: u32,
            inner: Vec<I>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct I {
            n: u32,
        }
        let e = from_slice_strict::<S>(br#"{"replicas":1.5,"inner":[]}"#).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.code, e.violations[0].field.as_str()), (ErrorCode::InvalidField, "replicas"));
        let e = from_slice_strict::<S>(br#"{"replicas":1,"inner":[{"n":"x"}]}"#).err().unwrap_or_else(|| panic!("ok"));
        assert_eq!(e.violations[0].field, "inner[0].n");
        let e = from_slice_strict::<S>(br#"[]"#).err().unwrap_or_else(|| panic!("ok"));
        assert_eq!(e.violations[0].field, "body");
        let e = from_slice_strict::<S>(br#"[1, []]"#).err().unwrap_or_else(|| panic!("an array read as a struct"));
        assert_eq!(e.violations[0].field, "body");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_agrees_with_serde_json_without_duplicates(s in ".{0,200}") {
            let strict = value_strict(s.as_bytes());
            let plain: Result<Value, _> = serde_json::from_str(&s);
            if let Ok(v) = strict {
                proptest::prop_assert_eq!(Some(v), plain.ok());
            }
        }
    }
}
