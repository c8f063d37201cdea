//! What a cook needs on a ticket besides the items (issue 13): an order note,
//! and per item a note, modifiers ("no onions", "extra cheese") and allergens.
//! All optional, so orders without them (the seed's) stay valid.
//!
//! Validation follows `order::validate`: it reads the parsed JSON, names the
//! field of every broken rule, and reports all of them at once.

use super::field_error::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const ORDER_NOTES_MAX: usize = 280;
pub const ITEM_NOTES_MAX: usize = 140;
pub const MODIFIERS_MAX: usize = 10;
pub const MODIFIER_MAX: usize = 50;

/// The 14 allergens food law names (EU FIC annex II, UK Natasha's law).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allergen {
    Celery,
    Gluten,
    Crustaceans,
    Eggs,
    Fish,
    Lupin,
    Milk,
    Molluscs,
    Mustard,
    Nuts,
    Peanuts,
    Sesame,
    Soya,
    Sulphites,
}

names!(Allergen, |s| format!("unknown allergen '{s}'"), {
    Celery => "celery",
    Gluten => "gluten",
    Crustaceans => "crustaceans",
    Eggs => "eggs",
    Fish => "fish",
    Lupin => "lupin",
    Milk => "milk",
    Molluscs => "molluscs",
    Mustard => "mustard",
    Nuts => "nuts",
    Peanuts => "peanuts",
    Sesame => "sesame",
    Soya => "soya",
    Sulphites => "sulphites",
});

impl Allergen {
    /// Comma-separated names, for storage (one text column on both backends).
    pub fn join(list: &[Allergen]) -> String {
        list.iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The inverse of `join`; unknown names (never written by us) are skipped.
    pub fn split(s: &str) -> Vec<Allergen> {
        s.split(',').filter_map(|p| p.parse().ok()).collect()
    }
}

/// The optional kitchen details of one item, as validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemDetails {
    pub notes: Option<String>,
    pub modifiers: Vec<String>,
    /// Sorted in the order of `Allergen::ALL`, without duplicates.
    pub allergens: Vec<Allergen>,
}

/// The field names these rules add to an item object.
pub const ITEM_FIELDS: [&str; 3] = ["notes", "modifiers", "allergens"];

/// Free text for the kitchen: at most `max` characters, no control characters
/// except line breaks. Blank text counts as no note.
fn text(
    field: &str,
    v: Option<&Value>,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                errors.push(FieldError::new(
                    field,
                    format!("must be at most {max} characters"),
                ));
                None
            } else if s.chars().any(|c| c.is_control() && c != '\n') {
                errors.push(FieldError::new(
                    field,
                    "must not contain control characters",
                ));
                None
            } else {
                let t = s.trim();
                (!t.is_empty()).then(|| t.to_string())
            }
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// The order's `notes`: up to 280 characters.
pub fn validate_order_notes(
    obj: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    text("notes", obj.get("notes"), ORDER_NOTES_MAX, errors)
}

/// Item `i`'s `notes`, `modifiers` and `allergens`.
pub fn validate_item_details(
    i: usize,
    item: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> ItemDetails {
    let path = |f: &str| format!("items[{i}].{f}");
    let notes = text(&path("notes"), item.get("notes"), ITEM_NOTES_MAX, errors);

    let mut modifiers = Vec::new();
    match item.get("modifiers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.len() > MODIFIERS_MAX => errors.push(FieldError::new(
            path("modifiers"),
            format!("must contain at most {MODIFIERS_MAX} modifiers"),
        )),
        Some(Value::Array(list)) => {
            for (k, m) in list.iter().enumerate() {
                let field = format!("items[{i}].modifiers[{k}]");
                match m {
                    Value::String(s) if s.trim().is_empty() || s.chars().count() > MODIFIER_MAX => {
                        errors.push(FieldError::new(
                            field,
                            format!("must be 1-{MODIFIER_MAX} characters"),
                        ))
                    }
                    Value::String(s) if s.chars().any(char::is_control) => errors.push(
                        FieldError::new(field, "must not contain control characters"),
                    ),
                    Value::String(s) => modifiers.push(s.trim().to_string()),
                    _ => errors.push(FieldError::new(field, "must be a string")),
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            path("modifiers"),
            "must be an array of strings",
        )),
    }

    let mut allergens = Vec::new();
    match item.get("allergens") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (k, a) in list.iter().enumerate() {
                let field = format!("items[{i}].allergens[{k}]");
                match a.as_str().map(str::parse::<Allergen>) {
                    Some(Ok(a)) => allergens.push(a),
                    _ => errors.push(FieldError::new(field, allowed_allergens_message())),
                }
            }
            allergens.sort();
            allergens.dedup();
        }
        Some(_) => errors.push(FieldError::new(
            path("allergens"),
            "must be an array of allergen names",
        )),
    }

    ItemDetails {
        notes,
        modifiers,
        allergens,
    }
}

fn allowed_allergens_message() -> String {
    let names: Vec<&str> = Allergen::ALL.iter().map(|a| a.as_str()).collect();
    format!("must be one of: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: Value) -> (ItemDetails, Vec<String>) {
        let mut errors = Vec::new();
        let d = validate_item_details(0, v.as_object().unwrap(), &mut errors);
        (d, errors.into_iter().map(|e| e.field).collect())
    }

    fn order_notes(v: Value) -> (Option<String>, Vec<String>) {
        let mut errors = Vec::new();
        let n = validate_order_notes(v.as_object().unwrap(), &mut errors);
        (n, errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn absent_details_are_valid_and_empty() {
        assert_eq!(item(json!({})), (ItemDetails::default(), vec![]));
        assert_eq!(
            item(json!({"notes": null, "modifiers": null, "allergens": null})),
            (ItemDetails::default(), vec![])
        );
        assert_eq!(order_notes(json!({})), (None, vec![]));
    }

    #[test]
    fn order_notes_limit_is_280_characters() {
        let ok = "é".repeat(ORDER_NOTES_MAX);
        assert_eq!(
            order_notes(json!({ "notes": ok })),
            (Some(ok.clone()), vec![])
        );
        assert_eq!(
            order_notes(json!({ "notes": format!("{ok}x") })),
            (None, vec!["notes".to_string()])
        );
        assert_eq!(order_notes(json!({"notes": 5})).1, ["notes"]);
        assert_eq!(order_notes(json!({"notes": "a\u{7}b"})).1, ["notes"]);
        // Line breaks are what a note is made of; blank means none.
        assert_eq!(
            order_notes(json!({"notes": " birthday\ncandles "}))
                .0
                .as_deref(),
            Some("birthday\ncandles")
        );
        assert_eq!(order_notes(json!({"notes": "   "})), (None, vec![]));
    }

    #[test]
    fn item_notes_limit_is_140_characters() {
        let ok = "a".repeat(ITEM_NOTES_MAX);
        assert_eq!(item(json!({ "notes": ok })).0.notes, Some(ok.clone()));
        assert_eq!(
            item(json!({ "notes": format!("{ok}a") })).1,
            ["items[0].notes"]
        );
    }

    #[test]
    fn modifiers_rules() {
        let (d, e) = item(json!({"modifiers": ["no onions", " extra cheese "]}));
        assert!(e.is_empty());
        assert_eq!(d.modifiers, ["no onions", "extra cheese"]);
        let ten: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert!(item(json!({ "modifiers": ten })).1.is_empty());
        let eleven: Vec<String> = (0..11).map(|i| format!("m{i}")).collect();
        assert_eq!(
            item(json!({ "modifiers": eleven })).1,
            ["items[0].modifiers"]
        );
        assert_eq!(
            item(json!({"modifiers": ["", "x".repeat(51), 3, "ok", "x".repeat(50)]})).1,
            [
                "items[0].modifiers[0]",
                "items[0].modifiers[1]",
                "items[0].modifiers[2]"
            ]
        );
        assert_eq!(
            item(json!({"modifiers": "no onions"})).1,
            ["items[0].modifiers"]
        );
    }

    #[test]
    fn allergens_from_the_fourteen_only() {
        let all: Vec<&str> = Allergen::ALL.iter().map(|a| a.as_str()).collect();
        let (d, e) = item(json!({ "allergens": all }));
        assert!(e.is_empty());
        assert_eq!(d.allergens, Allergen::ALL);
        // Duplicates collapse; the order is the canonical one.
        let (d, _) = item(json!({"allergens": ["nuts", "gluten", "nuts"]}));
        assert_eq!(d.allergens, [Allergen::Gluten, Allergen::Nuts]);
        let mut errors = Vec::new();
        validate_item_details(
            3,
            json!({"allergens": ["gluten", "Gluten", "avocado", 7]})
                .as_object()
                .unwrap(),
            &mut errors,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[3].allergens[1]",
                "items[3].allergens[2]",
                "items[3].allergens[3]"
            ]
        );
        assert!(errors[0].message.contains("celery") && errors[0].message.contains("sulphites"));
        assert_eq!(item(json!({"allergens": "nuts"})).1, ["items[0].allergens"]);
    }

    #[test]
    fn allergen_storage_round_trips() {
        assert_eq!(
            Allergen::split(&Allergen::join(&Allergen::ALL)),
            Allergen::ALL
        );
        assert_eq!(Allergen::split(""), []);
        assert_eq!(Allergen::join(&[]), "");
        for a in Allergen::ALL {
            assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        }
    }
}
