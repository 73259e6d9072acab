//! Request bodies whose keys match case-insensitively, as the original service's did,
//! with errors that name the field.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, LazyLock, RwLock},
};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, Type},
};
use serde_json::{Map, Value};

use crate::pricing;

/// A request body whose keys match the declared properties of `T` case-insensitively
/// (an exact match first), as the original service did: its README sends `"Name"`,
/// `"Description"` and `"productsIds"`. Unknown keys are dropped.
///
/// Before `T` parses, every required property is checked to be present and every
/// property to have the JSON type its schema says, so those errors name the field
/// (poem-openapi's own messages do not). The OpenAPI spec shows `T` unchanged.
pub(crate) struct CaseInsensitive<T>(pub T);

impl<T: Type> Type for CaseInsensitive<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_raw_value()
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        self.0.raw_element_iter()
    }
}

impl<T: ParseFromJSON> ParseFromJSON for CaseInsensitive<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let Some(Value::Object(object)) = value else {
            return Err(ParseError::custom("the body must be a JSON object"));
        };
        let registry = registry_of::<T>();
        let registry = registry.as_ref();
        let schema_ref = T::schema_ref();
        let Some(schema) = resolve(&schema_ref, registry) else {
            return T::parse_from_json(Some(Value::Object(object))).map(Self).map_err(ParseError::propagate);
        };
        let object = canonical_keys(object, schema);
        for required in &schema.required {
            if !object.contains_key(*required) {
                return Err(ParseError::custom(format!("field `{required}` is required")));
            }
        }
        for (name, property) in &schema.properties {
            if let Some(value) = object.get(*name) {
                check_type(name, value, property, registry).map_err(ParseError::custom)?;
            }
        }
        T::parse_from_json(Some(Value::Object(object))).map(Self).map_err(ParseError::propagate)
    }
}

/// The schemas `T` registers, built once per type (at its first request), not per request.
fn registry_of<T: Type>() -> Arc<Registry> {
    // One map for every `T`: a static in a generic function is shared by all of them.
    static REGISTRIES: LazyLock<RwLock<HashMap<String, Arc<Registry>>>> = LazyLock::new(Default::default);
    let name = T::name();
    if let Some(registry) = REGISTRIES.read().unwrap_or_else(|e| e.into_inner()).get(name.as_ref()) {
        return registry.clone();
    }
    let mut registry = Registry::new();
    T::register(&mut registry);
    let registry = Arc::new(registry);
    REGISTRIES.write().unwrap_or_else(|e| e.into_inner()).insert(name.into_owned(), registry.clone());
    registry
}

/// Renames each key onto the declared property it matches: exact first, then ignoring case.
fn canonical_keys(object: Map<String, Value>, schema: &MetaSchema) -> Map<String, Value> {
    let mut exact = Map::new();
    let mut loose = Vec::new();
    for (key, value) in object {
        if let Some((name, _)) = schema.properties.iter().find(|(name, _)| *name == key) {
            exact.insert((*name).to_owned(), value);
        } else if let Some((name, _)) = schema.properties.iter().find(|(name, _)| name.eq_ignore_ascii_case(&key)) {
            loose.push(((*name).to_owned(), value));
        }
    }
    for (name, value) in loose {
        exact.entry(name).or_insert(value);
    }
    exact
}

fn resolve<'a>(schema: &'a MetaSchemaRef, registry: &'a Registry) -> Option<&'a MetaSchema> {
    let schema = match schema {
        MetaSchemaRef::Inline(schema) => schema,
        MetaSchemaRef::Reference(name) => registry.schemas.get(name)?,
    };
    if schema.ty.is_empty() || schema.ty == "object" && schema.properties.is_empty() {
        // A documented or validated reference is wrapped as `allOf: [the type, …]`.
        if let Some(inner) = schema.all_of.iter().find_map(|s| resolve(s, registry)) {
            return Some(inner);
        }
    }
    Some(schema)
}

/// Whether a value has the JSON type (and uuid format or enum value) its schema declares.
fn check_type(field: &str, value: &Value, schema: &MetaSchemaRef, registry: &Registry) -> Result<(), String> {
    let Some(schema) = resolve(schema, registry) else {
        return Ok(());
    };
    if value.is_null() {
        return if schema.nullable { Ok(()) } else { Err(format!("field `{field}` must not be null")) };
    }
    let ok = match schema.ty {
        "string" => match value.as_str() {
            Some(text) if schema.format == Some("uuid") => {
                if uuid::Uuid::parse_str(text).is_err() {
                    return Err(format!("field `{field}` must be a UUID, not {value}"));
                }
                true
            }
            Some(_) if !schema.enum_items.is_empty() => {
                if !schema.enum_items.contains(value) {
                    let allowed: Vec<String> = schema.enum_items.iter().map(Value::to_string).collect();
                    return Err(format!("field `{field}` must be one of {}, not {value}", allowed.join(", ")));
                }
                true
            }
            Some(_) => true,
            None => false,
        },
        "integer" => value.is_i64() || value.is_u64(),
        "number" => match value.as_number() {
            Some(number) if schema.format == Some("decimal") => {
                if pricing::decimal_from_json(number).is_none() {
                    return Err(format!("field `{field}` is out of range: {value}"));
                }
                true
            }
            Some(_) => true,
            None => false,
        },
        "boolean" => value.is_boolean(),
        "array" => match (value.as_array(), &schema.items) {
            (Some(items), Some(item_schema)) => {
                for (i, item) in items.iter().enumerate() {
                    check_type(&format!("{field}[{i}]"), item, item_schema, registry)?;
                }
                true
            }
            (items, _) => items.is_some(),
        },
        "object" => value.is_object(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let article = if schema.ty.starts_with(['a', 'i', 'o']) { "an" } else { "a" };
        Err(format!("field `{field}` must be {article} {}, not {value}", schema.ty))
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;
    use serde_json::json;

    use super::*;
    use crate::http::formats::JsonDecimal;
    use rust_decimal::Decimal;

    #[derive(Debug, Object)]
    struct Sample {
        #[oai(rename = "productsIds")]
        products_ids: Vec<uuid::Uuid>,
        name: String,
        #[oai(validator(maximum(value = "99")))]
        discount: i64,
        price: JsonDecimal,
        description: Option<String>,
    }

    fn parse(value: Value) -> Result<Sample, String> {
        CaseInsensitive::<Sample>::parse_from_json(Some(value)).map(|s| s.0).map_err(|e| e.into_message())
    }

    const ID: &str = "ec14f9be-44e3-4ec0-97d3-47fdac6c55c9";

    #[test]
    fn keys_match_whatever_their_case() {
        let sample = parse(json!({"PRODUCTSIDS": [ID], "Name": "x", "discount": 1, "Price": 1.5, "extra": 1})).unwrap();
        assert_eq!(sample.name, "x");
        assert_eq!(sample.price, JsonDecimal(Decimal::new(15, 1)));
        assert_eq!(sample.products_ids.len(), 1);
    }

    #[test]
    fn an_exact_key_wins_over_a_loose_one() {
        let sample =
            parse(json!({"NAME": "loose", "name": "exact", "productsIds": [], "discount": 0, "price": 1})).unwrap();
        assert_eq!(sample.name, "exact");
    }

    #[test]
    fn errors_name_the_field() {
        let base = json!({"productsIds": [ID], "name": "x", "discount": 1, "price": 1});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            parse(body).unwrap_err()
        };
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("price");
        assert!(parse(missing).unwrap_err().contains("field `price` is required"));
        assert!(with("price", json!("1")).contains("field `price` must be a number"));
        assert!(with("discount", json!(1.5)).contains("field `discount` must be an integer"));
        assert!(with("name", json!(null)).contains("field `name` must not be null"));
        assert!(with("productsIds", json!(["nope"])).contains("field `productsIds[0]` must be a UUID"));
        assert!(with("discount", json!(100)).contains("field `discount` verification failed"));
        assert!(parse(json!([1])).unwrap_err().contains("must be a JSON object"));
    }
}
