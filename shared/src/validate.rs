//! Small rules shared by the values parsed at the edge.

use uuid::Uuid;

use crate::error::AppError;

/// An id from a path segment. Parsed here rather than by poem-openapi, whose error
/// would name the parameter `param0`.
pub(crate) fn id(field: &'static str, value: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(value).map_err(|_| AppError::invalid(field, format!("must be a UUID, not {value:?}")))
}

/// A trimmed, non-blank text of at most `max` characters without NUL (which PostgreSQL
/// cannot store in `text`).
pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<String, AppError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    optional_text(field, value, max)
}

/// Like [`text`], but an empty value is allowed.
pub(crate) fn optional_text(field: &'static str, value: &str, max: usize) -> Result<String, AppError> {
    if value.contains('\0') {
        return Err(AppError::invalid(field, "must not contain NUL characters"));
    }
    if value.chars().count() > max {
        return Err(AppError::invalid(field, format!("must be at most {max} characters")));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(text("name", "  Phone ", 10).unwrap(), "Phone");
        assert!(text("name", "   ", 10).is_err());
        assert!(text("name", "abcdefghijk", 10).is_err());
        assert!(text("name", "a\0b", 10).is_err());
        assert_eq!(text("name", "Ωμέγα", 5).unwrap(), "Ωμέγα");
        assert_eq!(optional_text("description", "", 10).unwrap(), "");
    }

    #[test]
    fn errors_name_the_field() {
        let error = text("streetName", "", 10).unwrap_err();
        assert_eq!(error.to_string(), "streetName: must not be empty");
    }
}
