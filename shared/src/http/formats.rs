//! Numbers and times as the wire writes them: exact decimals as JSON numbers, times as
//! RFC 3339.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::pricing;

/// An exact decimal on the wire as a JSON number (`90`, `90.5`), for prices. poem-openapi's
/// own `Decimal` is a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonDecimal(pub Decimal);

impl Type for JsonDecimal {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "number_decimal".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("number", "decimal")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for JsonDecimal {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(number)) => pricing::decimal_from_json(&number)
                .map(JsonDecimal)
                .ok_or_else(|| ParseError::custom(format!("{number} is out of range"))),
            Some(other) => Err(ParseError::expected_type(other)),
            None => Err(ParseError::expected_input()),
        }
    }
}

impl ToJSON for JsonDecimal {
    fn to_json(&self) -> Option<Value> {
        Some(Value::Number(pricing::json_number(self.0)))
    }
}

impl serde::Serialize for JsonDecimal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        pricing::json_number(self.0).serialize(serializer)
    }
}

/// A time as poem-openapi writes it (`2026-11-30T23:00:00.123456+00:00`), for `serde`.
pub(crate) fn rfc3339<S: serde::Serializer>(
    time: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339())
}

impl From<pricing::Money> for JsonDecimal {
    fn from(money: pricing::Money) -> Self {
        JsonDecimal(money.amount())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn decimals_render_as_numbers() {
        assert_eq!(JsonDecimal(Decimal::new(9000, 2)).to_json(), Some(json!(90)));
        assert_eq!(JsonDecimal(Decimal::new(905, 1)).to_json(), Some(json!(90.5)));
    }
}
