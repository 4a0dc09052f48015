//! Field readers that fail with the contract error texts of CONTROL-PLANE.md, word for
//! word (the cloud may match on them; the odd quoting comes from the older agent).

use serde_json::{Map, Number, Value};

use super::period::parse_iso;

/// A request the contract rejects; `Display` is the exact text of the ack's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("Missing required field: 'Missing key: {0}'")]
    Missing(String),
    #[error("Invalid field type: Value must be {0}.")]
    WrongType(Kind),
    #[error("Validation error: {0}")]
    Invalid(String),
}

/// The type words of the contract's `Invalid field type` texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    NonEmptyString,
    Boolean,
    List,
    IsoDate,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::NonEmptyString => "a non-empty string",
            Kind::Boolean => "a boolean",
            Kind::List => "a list",
            Kind::IsoDate => "a valid ISO datetime string",
        })
    }
}

/// Typed access to one JSON object; `null` counts as absent, unknown keys are ignored.
pub struct Fields<'a>(pub &'a Map<String, Value>);

type R<T> = Result<T, ContractError>;

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> R<&'a Value> {
        self.get(key)
            .ok_or_else(|| ContractError::Missing(key.to_owned()))
    }

    pub fn opt_str(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ContractError::WrongType(Kind::String)),
        }
    }

    pub fn str(&self, key: &str) -> R<String> {
        match self.required(key)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ContractError::WrongType(Kind::String)),
        }
    }

    pub fn non_empty(&self, key: &str) -> R<String> {
        match self.required(key)? {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(ContractError::WrongType(Kind::NonEmptyString)),
        }
    }

    /// A JSON number (a boolean is not one, unlike in Python).
    pub fn opt_number(&self, key: &str) -> R<Option<Number>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.clone())),
            Some(_) => Err(ContractError::WrongType(Kind::Number)),
        }
    }

    pub fn opt_bool(&self, key: &str) -> R<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ContractError::WrongType(Kind::Boolean)),
        }
    }

    pub fn opt_list(&self, key: &str) -> R<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(ContractError::WrongType(Kind::List)),
        }
    }

    pub fn list(&self, key: &str) -> R<&'a Vec<Value>> {
        self.opt_list(key)?
            .ok_or_else(|| ContractError::Missing(key.to_owned()))
    }

    pub fn opt_iso(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if parse_iso(s).is_some() => Ok(Some(s.clone())),
            Some(_) => Err(ContractError::WrongType(Kind::IsoDate)),
        }
    }

    pub fn opt_list_of_strings(&self, key: &str) -> R<Option<Vec<String>>> {
        let Some(items) = self.opt_list(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ContractError::WrongType(Kind::String)),
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    }

    /// An object-valued field; the contract has no type word for objects, so a wrong
    /// type is a validation error naming the field.
    pub fn opt_object(&self, key: &str) -> R<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(ContractError::Invalid(format!("{key} must be an object"))),
        }
    }

    /// Any JSON value, kept as sent.
    pub fn opt_value(&self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }
}

/// Reads `v` as the object every request and list item must be.
pub fn object<'a>(v: &'a Value, what: &str) -> R<Fields<'a>> {
    match v {
        Value::Object(o) => Ok(Fields(o)),
        _ => Err(ContractError::Invalid(format!(
            "{what} must be a JSON object"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn texts_are_the_contract_ones() {
        let cases = [
            (
                ContractError::Missing("container_name".into()),
                "Missing required field: 'Missing key: container_name'",
            ),
            (
                ContractError::WrongType(Kind::String),
                "Invalid field type: Value must be a string.",
            ),
            (
                ContractError::WrongType(Kind::Number),
                "Invalid field type: Value must be a number.",
            ),
            (
                ContractError::WrongType(Kind::NonEmptyString),
                "Invalid field type: Value must be a non-empty string.",
            ),
            (
                ContractError::WrongType(Kind::Boolean),
                "Invalid field type: Value must be a boolean.",
            ),
            (
                ContractError::WrongType(Kind::List),
                "Invalid field type: Value must be a list.",
            ),
            (
                ContractError::WrongType(Kind::IsoDate),
                "Invalid field type: Value must be a valid ISO datetime string.",
            ),
            (
                ContractError::Invalid("x y".into()),
                "Validation error: x y",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn null_is_absent_and_types_are_strict() {
        let m =
            json!({"n": null, "b": true, "s": "x", "e": " ", "i": 3, "l": [1], "d": "2024-01-01"});
        let f = Fields(m.as_object().unwrap());
        assert_eq!(f.opt_str("n"), Ok(None));
        assert_eq!(f.str("n"), Err(ContractError::Missing("n".into())));
        assert_eq!(
            f.opt_number("b"),
            Err(ContractError::WrongType(Kind::Number))
        );
        assert_eq!(
            f.opt_bool("i"),
            Err(ContractError::WrongType(Kind::Boolean))
        );
        assert_eq!(
            f.non_empty("e"),
            Err(ContractError::WrongType(Kind::NonEmptyString))
        );
        assert_eq!(f.non_empty("s"), Ok("x".into()));
        assert_eq!(f.opt_list("s"), Err(ContractError::WrongType(Kind::List)));
        assert_eq!(
            f.opt_list_of_strings("l"),
            Err(ContractError::WrongType(Kind::String))
        );
        assert_eq!(f.opt_iso("s"), Err(ContractError::WrongType(Kind::IsoDate)));
        assert_eq!(f.opt_iso("d"), Ok(Some("2024-01-01".into())));
        assert!(matches!(f.opt_object("s"), Err(ContractError::Invalid(_))));
    }
}
