//! Order intake rules: validation, totals, priority and order numbers.
//!
//! Validation works on a parsed `serde_json::Value` rather than a derived struct
//! so that every problem (a wrong type included) is reported with the field's
//! path and the rule it broke, all of them at once.

pub use super::field_error::FieldError;
use super::kitchen_notes::{self, Allergen};
use super::money::Cents;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MAX_ITEMS: usize = 20;
pub const MIN_PRICE: Cents = Cents(1);
pub const MAX_PRICE: Cents = Cents(99_999);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    DineIn,
    Takeout,
    Delivery,
}

names!(OrderType, |s| format!("unknown order type '{s}' (expected dine_in, takeout or delivery)"), {
    DineIn => "dine_in",
    Takeout => "takeout",
    Delivery => "delivery",
});

/// One line of an order. The kitchen details (issue 13) are left out of the
/// JSON when empty, so an order without them has the spec's exact shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub quantity: i64,
    pub price: Cents,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifiers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allergens: Vec<Allergen>,
    /// What kind of item it is (issue 24), for routing it to stations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The stations it was routed to at intake (issue 24; set by
    /// `stations::Routing::route_order`, never by the client). Empty without stations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stations: Vec<String>,
}

impl Item {
    /// An item without kitchen details.
    pub fn new(name: impl Into<String>, quantity: i64, price: Cents) -> Item {
        Item {
            name: name.into(),
            quantity,
            price,
            notes: None,
            modifiers: Vec::new(),
            allergens: Vec::new(),
            category: None,
            stations: Vec::new(),
        }
    }
}

/// An order that passed every rule. Only `validate` builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub customer_name: String,
    pub order_type: OrderType,
    pub table_number: Option<i64>,
    pub delivery_address: Option<String>,
    pub items: Vec<Item>,
    pub total: Cents,
    pub priority: i32,
    /// The order's note for the kitchen (issue 13).
    pub notes: Option<String>,
}

/// Every priority `priority_for` gives, highest first. With quorum queues
/// (which have no message priorities in RabbitMQ 3.10) each has a queue of its
/// own, and workers drain them in this order.
pub const PRIORITIES: [i32; 3] = [10, 5, 1];

/// Priority from the total: 10 above $100, 5 from $50 to $100, else 1.
pub fn priority_for(total: Cents) -> i32 {
    if total > Cents(10_000) {
        10
    } else if total >= Cents(5_000) {
        5
    } else {
        1
    }
}

/// `ORD_YYYYMMDD_NNN`: the UTC date and the day's counter, at least three digits
/// (the counter widens past 999 instead of wrapping).
pub fn order_number(date: NaiveDate, seq: i64) -> String {
    format!("ORD_{}_{seq:03}", date.format("%Y%m%d"))
}

/// Whether `s` looks like an order number at all (used to answer 400, not 404,
/// for garbage in a URL).
pub fn is_order_number(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("ORD_") else {
        return false;
    };
    let Some((date, seq)) = rest.split_once('_') else {
        return false;
    };
    date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && NaiveDate::parse_from_str(date, "%Y%m%d").is_ok()
        && (3..=12).contains(&seq.len())
        && seq.bytes().all(|b| b.is_ascii_digit())
}

const KNOWN_FIELDS: [&str; 6] = [
    "customer_name",
    "order_type",
    "table_number",
    "delivery_address",
    "items",
    "notes",
];
const KNOWN_ITEM_FIELDS: [&str; 4] = ["name", "quantity", "price", "category"];
/// The longest item category (issue 24).
pub const MAX_CATEGORY: usize = 40;

/// Validates a create-order request body. Returns every broken rule.
pub fn validate(body: &Value) -> Result<ValidOrder, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), "unknown field"));
        }
    }

    let customer_name = validate_customer_name(obj, &mut errors);
    let order_type = match present(obj, "order_type") {
        None => {
            errors.push(FieldError::new("order_type", "is required"));
            None
        }
        Some(Value::String(s)) => match s.parse::<OrderType>() {
            Ok(t) => Some(t),
            Err(_) => {
                errors.push(FieldError::new(
                    "order_type",
                    "must be one of: dine_in, takeout, delivery",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("order_type", "must be a string"));
            None
        }
    };

    let table_number = match present(obj, "table_number") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=100).contains(&n) => Some(n),
            Some(_) => {
                errors.push(FieldError::new("table_number", "must be between 1 and 100"));
                None
            }
            None => {
                errors.push(FieldError::new("table_number", "must be an integer"));
                None
            }
        },
    };
    let table_given = present(obj, "table_number").is_some();

    let delivery_address = match present(obj, "delivery_address") {
        None => None,
        Some(Value::String(s)) => {
            let len = s.trim().chars().count();
            if len < 10 {
                errors.push(FieldError::new(
                    "delivery_address",
                    "must be at least 10 characters",
                ));
                None
            } else if s.chars().count() > 500 {
                errors.push(FieldError::new(
                    "delivery_address",
                    "must be at most 500 characters",
                ));
                None
            } else if s.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "delivery_address",
                    "must not contain control characters",
                ));
                None
            } else {
                Some(s.trim().to_string())
            }
        }
        Some(_) => {
            errors.push(FieldError::new("delivery_address", "must be a string"));
            None
        }
    };
    let address_given = present(obj, "delivery_address").is_some();

    // Conditional rules: which of table_number / delivery_address each type
    // needs, the type's own field first (the order the errors are listed in).
    if let Some(t) = order_type {
        let table = ("table_number", table_given);
        let address = ("delivery_address", address_given);
        let (needed, refused) = match t {
            OrderType::DineIn => (Some(table), [Some(address), None]),
            OrderType::Delivery => (Some(address), [Some(table), None]),
            OrderType::Takeout => (None, [Some(table), Some(address)]),
        };
        if let Some((field, false)) = needed {
            errors.push(FieldError::new(
                field,
                format!("is required for {t} orders"),
            ));
        }
        for (field, _) in refused.into_iter().flatten().filter(|(_, given)| *given) {
            errors.push(FieldError::new(
                field,
                format!("must not be present for {t} orders"),
            ));
        }
    }

    let items = validate_items(obj, &mut errors);
    let notes = kitchen_notes::validate_order_notes(obj, &mut errors);

    match (customer_name, order_type, items) {
        (Some(customer_name), Some(order_type), Some(items)) if errors.is_empty() => {
            let total = Cents(items.iter().map(|i| i.price.0 * i.quantity).sum());
            Ok(ValidOrder {
                customer_name,
                order_type,
                table_number,
                delivery_address,
                total,
                priority: priority_for(total),
                items,
                notes,
            })
        }
        _ => Err(errors),
    }
}

/// A field counts as absent when missing or `null` (the Order Message itself
/// carries `"table_number": null`).
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn validate_customer_name(
    obj: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let field = "customer_name";
    match present(obj, field) {
        None => errors.push(FieldError::new(field, "is required")),
        Some(Value::String(s)) => {
            let len = s.chars().count();
            if len == 0 || len > 100 {
                errors.push(FieldError::new(field, "must be 1-100 characters"));
            } else if !s
                .chars()
                .all(|c| c.is_alphabetic() || c == ' ' || c == '-' || c == '\'')
            {
                errors.push(FieldError::new(
                    field,
                    "may contain only letters, spaces, hyphens and apostrophes",
                ));
            } else if !s.chars().any(char::is_alphabetic) {
                errors.push(FieldError::new(field, "must contain at least one letter"));
            } else {
                return Some(s.clone());
            }
        }
        Some(_) => errors.push(FieldError::new(field, "must be a string")),
    }
    None
}

/// Records that `field` broke `rule`; the field has no value.
fn refuse<T>(errors: &mut Vec<FieldError>, field: String, rule: &str) -> Option<T> {
    errors.push(FieldError::new(field, rule));
    None
}

fn validate_items(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Vec<Item>> {
    let list = match present(obj, "items") {
        None => {
            errors.push(FieldError::new("items", "is required"));
            return None;
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            errors.push(FieldError::new("items", "must be an array"));
            return None;
        }
    };
    if list.is_empty() || list.len() > MAX_ITEMS {
        errors.push(FieldError::new(
            "items",
            "must contain between 1 and 20 items",
        ));
        return None;
    }
    let before = errors.len();
    let mut items = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let path = |f: &str| format!("items[{i}].{f}");
        let Some(item) = raw.as_object() else {
            errors.push(FieldError::new(format!("items[{i}]"), "must be an object"));
            continue;
        };
        for key in item.keys() {
            if !KNOWN_ITEM_FIELDS.contains(&key.as_str())
                && !kitchen_notes::ITEM_FIELDS.contains(&key.as_str())
            {
                errors.push(FieldError::new(path(key), "unknown field"));
            }
        }
        let name = match present(item, "name") {
            Some(Value::String(s)) => {
                let len = s.chars().count();
                if len == 0 || len > 50 || s.trim().is_empty() {
                    refuse(errors, path("name"), "must be 1-50 characters")
                } else if s.chars().any(char::is_control) {
                    refuse(errors, path("name"), "must not contain control characters")
                } else {
                    Some(s.clone())
                }
            }
            Some(_) => refuse(errors, path("name"), "must be a string"),
            None => refuse(errors, path("name"), "is required"),
        };
        let quantity = match present(item, "quantity") {
            Some(v) => match v.as_i64() {
                Some(q) if (1..=10).contains(&q) => Some(q),
                Some(_) => refuse(errors, path("quantity"), "must be between 1 and 10"),
                None => refuse(errors, path("quantity"), "must be an integer"),
            },
            None => refuse(errors, path("quantity"), "is required"),
        };
        let price = match present(item, "price") {
            Some(Value::Number(n)) => match n.as_f64().and_then(Cents::from_decimal) {
                Some(p) if (MIN_PRICE..=MAX_PRICE).contains(&p) => Some(p),
                Some(_) => refuse(errors, path("price"), "must be between 0.01 and 999.99"),
                None => refuse(
                    errors,
                    path("price"),
                    "must have at most two decimal places",
                ),
            },
            Some(_) => refuse(errors, path("price"), "must be a number"),
            None => refuse(errors, path("price"), "is required"),
        };
        let details = kitchen_notes::validate_item_details(i, item, errors);
        let category = match present(item, "category") {
            None => None,
            Some(Value::String(s)) => {
                let t = s.trim();
                if t.is_empty()
                    || t.chars().count() > MAX_CATEGORY
                    || t.chars().any(char::is_control)
                {
                    errors.push(FieldError::new(
                        path("category"),
                        "must be 1-40 characters, without control characters",
                    ));
                }
                Some(t.to_string())
            }
            Some(_) => {
                errors.push(FieldError::new(path("category"), "must be a string"));
                None
            }
        };
        if let (Some(name), Some(quantity), Some(price)) = (name, quantity, price) {
            items.push(Item {
                name,
                quantity,
                price,
                notes: details.notes,
                modifiers: details.modifiers,
                allergens: details.allergens,
                category,
                stations: Vec::new(),
            });
        }
    }
    (errors.len() == before).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        validate(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn takeout(items: Value) -> Value {
        json!({"customer_name": "John Doe", "order_type": "takeout", "items": items})
    }

    #[test]
    fn accepts_the_spec_examples_with_exact_totals() {
        let o = validate(&takeout(json!([
            {"name": "Margherita Pizza", "quantity": 2, "price": 15.99},
            {"name": "Caesar Salad", "quantity": 1, "price": 8.99}
        ])))
        .unwrap();
        assert_eq!(o.total, Cents(4097));
        assert_eq!(o.priority, 1);

        let o = validate(
            &json!({"customer_name": "Jane Smith", "order_type": "dine_in",
            "table_number": 12, "items": [{"name": "Steak", "quantity": 1, "price": 29.99}]}),
        )
        .unwrap();
        assert_eq!((o.total, o.table_number), (Cents(2999), Some(12)));

        let o = validate(
            &json!({"customer_name": "Bob Johnson", "order_type": "delivery",
            "delivery_address": "123 Main Street, Apt 4B",
            "items": [{"name": "Burger Combo", "quantity": 2, "price": 18.99}]}),
        )
        .unwrap();
        assert_eq!(o.total, Cents(3798));
        assert_eq!(
            o.delivery_address.as_deref(),
            Some("123 Main Street, Apt 4B")
        );
    }

    #[test]
    fn every_priority_has_a_band() {
        for cents in [0, 1, 4_999, 5_000, 10_000, 10_001, 1_000_000] {
            assert!(PRIORITIES.contains(&priority_for(Cents(cents))), "{cents}");
        }
        assert!(PRIORITIES.windows(2).all(|w| w[0] > w[1]), "highest first");
    }

    #[test]
    fn priority_thresholds() {
        assert_eq!(priority_for(Cents(10_001)), 10);
        assert_eq!(priority_for(Cents(10_000)), 5);
        assert_eq!(priority_for(Cents(5_000)), 5);
        assert_eq!(priority_for(Cents(4_999)), 1);
        let o = validate(&takeout(
            json!([{"name": "Pizza", "quantity": 7, "price": 15.99}]),
        ));
        assert_eq!(o.unwrap().priority, 10);
    }

    #[test]
    fn order_numbers() {
        let d = NaiveDate::from_ymd_opt(2024, 12, 16).unwrap();
        assert_eq!(order_number(d, 1), "ORD_20241216_001");
        assert_eq!(order_number(d, 999), "ORD_20241216_999");
        assert_eq!(order_number(d, 1000), "ORD_20241216_1000");
        assert!(is_order_number("ORD_20241216_001"));
        assert!(is_order_number("ORD_20241216_1000"));
        for bad in [
            "ORD_2024121_001",
            "ord_20241216_001",
            "ORD_20241316_001",
            "ORD_20241216_01",
            "x",
        ] {
            assert!(!is_order_number(bad), "{bad}");
        }
    }

    #[test]
    fn customer_name_rules() {
        let with_name = |n: Value| {
            json!({"customer_name": n, "order_type": "takeout",
                   "items": [{"name": "P", "quantity": 1, "price": 1.0}]})
        };
        assert!(validate(&with_name(json!("Renée O'Brien-Smith"))).is_ok());
        for bad in [
            json!(""),
            json!("R2D2"),
            json!("Bob!"),
            json!("a".repeat(101)),
            json!(7),
            json!(" - "),
        ] {
            assert_eq!(
                fields(with_name(bad.clone())),
                vec!["customer_name"],
                "{bad}"
            );
        }
        assert!(validate(&with_name(json!("a".repeat(100)))).is_ok());
    }

    #[test]
    fn item_rules_name_the_field() {
        let one = |item: Value| fields(takeout(json!([item])));
        // [the field named, the item]
        let cases = json!([
            ["items[0].name", {"name": "", "quantity": 1, "price": 1.0}],
            ["items[0].name", {"name": "x".repeat(51), "quantity": 1, "price": 1.0}],
            ["items[0].quantity", {"name": "P", "quantity": 0, "price": 1.0}],
            ["items[0].quantity", {"name": "P", "quantity": 11, "price": 1.0}],
            ["items[0].quantity", {"name": "P", "quantity": 1.5, "price": 1.0}],
            ["items[0].price", {"name": "P", "quantity": 1, "price": 0.0}],
            ["items[0].price", {"name": "P", "quantity": 1, "price": 1000.0}],
            ["items[0].price", {"name": "P", "quantity": 1, "price": 1.001}],
            ["items[0].price", {"name": "P", "quantity": 1, "price": "1.00"}],
            ["items[0].x", {"name": "P", "quantity": 1, "price": 1.0, "x": 1}]
        ]);
        for case in cases.as_array().into_iter().flatten() {
            assert_eq!(
                one(case[1].clone()),
                [case[0].as_str().unwrap_or("")],
                "{case}"
            );
        }
        assert_eq!(fields(takeout(json!([]))), ["items"]);
        let many: Vec<Value> = (0..21)
            .map(|_| json!({"name": "P", "quantity": 1, "price": 1.0}))
            .collect();
        assert_eq!(fields(takeout(Value::Array(many))), ["items"]);
        assert_eq!(fields(takeout(json!("pizza"))), ["items"]);
    }

    #[test]
    fn conditional_fields_per_type() {
        let items = json!([{"name": "P", "quantity": 1, "price": 1.0}]);
        let f = |extra: Value| {
            let mut v = extra;
            v["customer_name"] = json!("Ann");
            v["items"] = items.clone();
            fields(v)
        };
        assert_eq!(f(json!({"order_type": "dine_in"})), ["table_number"]);
        assert_eq!(
            f(json!({"order_type": "dine_in", "table_number": 0})),
            ["table_number"]
        );
        assert_eq!(
            f(json!({"order_type": "dine_in", "table_number": 101})),
            ["table_number"]
        );
        assert_eq!(
            f(
                json!({"order_type": "dine_in", "table_number": 5, "delivery_address": "123 Main Street"})
            ),
            ["delivery_address"]
        );
        assert_eq!(f(json!({"order_type": "delivery"})), ["delivery_address"]);
        assert_eq!(
            f(json!({"order_type": "delivery", "delivery_address": "short"})),
            ["delivery_address"]
        );
        assert_eq!(
            f(
                json!({"order_type": "delivery", "delivery_address": "123 Main Street", "table_number": 3})
            ),
            ["table_number"]
        );
        assert_eq!(
            f(json!({"order_type": "takeout", "table_number": 3})),
            ["table_number"]
        );
        assert_eq!(f(json!({"order_type": "pickup"})), ["order_type"]);
        assert_eq!(f(json!({})), ["order_type"]);
    }

    #[test]
    fn kitchen_details_are_optional_validated_and_kept() {
        let o = validate(&json!({"customer_name": "Ann", "order_type": "takeout",
            "notes": "Customer waits at the bar",
            "items": [{"name": "Burger", "quantity": 2, "price": 12.5, "notes": "well done",
                       "modifiers": ["no onions"], "allergens": ["sesame", "gluten"]},
                      {"name": "Fries", "quantity": 1, "price": 4.5}]}))
        .unwrap();
        assert_eq!(o.notes.as_deref(), Some("Customer waits at the bar"));
        assert_eq!(o.items[0].notes.as_deref(), Some("well done"));
        assert_eq!(o.items[0].modifiers, ["no onions"]);
        assert_eq!(o.items[0].allergens, [Allergen::Gluten, Allergen::Sesame]);
        assert_eq!(o.items[1], Item::new("Fries", 1, Cents(450)));
        assert_eq!(o.total, Cents(2950));
        // Every broken rule at once, each naming its field, alongside the old rules.
        let errs = fields(json!({"customer_name": "Ann", "order_type": "takeout",
            "notes": "x".repeat(281),
            "items": [{"name": "", "quantity": 1, "price": 1.0, "allergens": ["avocado"],
                       "modifiers": ["ok", ""], "notes": "y".repeat(141)}]}));
        assert_eq!(
            errs,
            [
                "items[0].name",
                "items[0].notes",
                "items[0].modifiers[1]",
                "items[0].allergens[0]",
                "notes"
            ]
        );
        // Without details, the item serialises in the spec's shape.
        assert_eq!(
            serde_json::to_value(Item::new("P", 1, Cents(100))).unwrap(),
            json!({"name": "P", "quantity": 1, "price": 1.0})
        );
    }

    #[test]
    fn reports_every_error_and_unknown_fields() {
        let errs = fields(json!({"customer_name": 1, "order_type": 2, "items": 3, "tip": 5}));
        assert_eq!(errs, ["tip", "customer_name", "order_type", "items"]);
        assert_eq!(fields(json!([1, 2])), ["body"]);
    }
}
