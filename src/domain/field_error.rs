//! One broken validation rule, naming its field. Shared by every validator in
//! `domain` (orders, kitchen details, report ranges).

use serde::Serialize;

/// One broken rule, naming the field (a path such as `items[2].price`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}
