//! Property tests for issue 13's pure rules: the kitchen details of an order (notes, modifiers,
//! allergens) and the speed-of-service statistics. Nothing may panic on any input; what
//! validation accepts obeys the rules it claims; every rejection names a field of the input;
//! percentiles are samples, ordered, and bounded by the data.

use proptest::prelude::*;
use proptest::sample::select;
use restaurant_system::domain::kitchen_notes::{
    Allergen, ITEM_NOTES_MAX, MODIFIERS_MAX, MODIFIER_MAX, ORDER_NOTES_MAX,
};
use restaurant_system::domain::order::validate;
use restaurant_system::domain::speed::{percentile, stats};
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// Letters, a multi-byte letter, spaces, a line break, and a control character that is refused.
const BELL: char = '\u{7}';
static TEXT_CHARS: [char; 6] = ['a', 'é', ' ', '\n', '-', BELL];

fn text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(select(&TEXT_CHARS[..]), 0..=max + 3)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

fn allergen_name() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => select(Allergen::ALL.to_vec()).prop_map(|a| json!(a.as_str())),
        1 => select(vec!["Gluten", "avocado", "", "nut"]).prop_map(|s| json!(s)),
        1 => Just(json!(3)),
    ]
    .boxed()
}

fn item_details() -> impl Strategy<Value = (Option<String>, Option<Vec<String>>, Option<Vec<Value>>)>
{
    (
        prop::option::of(text(ITEM_NOTES_MAX)),
        prop::option::of(prop::collection::vec(
            text(MODIFIER_MAX),
            0..=MODIFIERS_MAX + 2,
        )),
        prop::option::of(prop::collection::vec(allergen_name(), 0..6)),
    )
}

fn order(
    notes: &Option<String>,
    item: &(Option<String>, Option<Vec<String>>, Option<Vec<Value>>),
) -> Value {
    let mut it = json!({"name": "Burger", "quantity": 1, "price": 9.5});
    if let Some(n) = &item.0 {
        it["notes"] = json!(n);
    }
    if let Some(m) = &item.1 {
        it["modifiers"] = json!(m);
    }
    if let Some(a) = &item.2 {
        it["allergens"] = json!(a);
    }
    let mut o = json!({"customer_name": "Ann", "order_type": "takeout", "items": [it]});
    if let Some(n) = notes {
        o["notes"] = json!(n);
    }
    o
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn details_accepted_obey_the_rules_and_rejections_name_the_field(
        notes in prop::option::of(text(ORDER_NOTES_MAX)),
        item in item_details(),
    ) {
        let body = order(&notes, &item);
        match validate(&body) {
            Ok(o) => {
                let n = notes.as_deref().unwrap_or("");
                let bell_free = !n.contains(BELL);
                prop_assert!(n.chars().count() <= ORDER_NOTES_MAX && bell_free);
                prop_assert_eq!(o.notes.as_deref(), Some(n.trim()).filter(|t| !t.is_empty()));
                let it = &o.items[0];
                prop_assert!(it.notes.as_ref().is_none_or(|t| t.chars().count() <= ITEM_NOTES_MAX));
                prop_assert!(it.modifiers.len() <= MODIFIERS_MAX);
                for m in &it.modifiers {
                    prop_assert!(!m.is_empty() && m.chars().count() <= MODIFIER_MAX);
                    prop_assert!(!m.chars().any(char::is_control));
                }
                // Allergens: from the fourteen, sorted, no duplicates.
                prop_assert!(it.allergens.windows(2).all(|w| w[0] < w[1]));
                let given = item.2.clone().unwrap_or_default();
                prop_assert!(given.iter().all(|a| a.as_str().is_some_and(|s| s.parse::<Allergen>().is_ok())));
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(
                        e.field == "notes" || e.field.starts_with("items[0]."),
                        "unexpected field {}", e.field
                    );
                }
            }
        }
    }

    #[test]
    fn percentiles_are_ordered_samples_within_the_data(
        mut samples in prop::collection::vec(0.0f64..100_000.0, 1..200),
    ) {
        let s = stats(&samples);
        samples.sort_by(f64::total_cmp);
        let (min, max) = (samples[0], samples[samples.len() - 1]);
        prop_assert_eq!(s.count, samples.len());
        let (avg, p50, p90) = (s.avg_seconds.unwrap(), s.p50_seconds.unwrap(), s.p90_seconds.unwrap());
        prop_assert!(p50 <= p90);
        // Rounded to milliseconds, so allow half a millisecond around the data.
        for v in [avg, p50, p90] {
            prop_assert!(v >= min - 0.0005 && v <= max + 0.0005, "{v} outside [{min}, {max}]");
        }
        let p = percentile(&samples, 90.0).unwrap();
        prop_assert!(samples.contains(&p));
        // Nearest rank: at least 90% of the samples are at or below p90, and fewer below it.
        let at_or_below = samples.iter().filter(|&&x| x <= p).count();
        prop_assert!(at_or_below * 10 >= samples.len() * 9);
        let below = samples.iter().filter(|&&x| x < p).count();
        prop_assert!(below * 10 < samples.len() * 9);
    }
}
