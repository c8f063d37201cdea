//! Idempotent order intake (issue 14): the `Idempotency-Key` header's rules,
//! whose key it is (the caller's scope) and the fingerprint of a request body.
//! Pure; the stores keep the keys (migration 005) and `services::order_api`
//! applies them.

use super::access::Caller;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The request header a client sends to make `POST /orders` safe to retry.
pub const HEADER: &str = "Idempotency-Key";

/// Longest key accepted, in bytes (= characters: keys are ASCII).
pub const MAX_LEN: usize = 255;

/// Why a header value is not a key.
pub const KEY_RULE: &str = "must be 1 to 255 printable ASCII characters";

/// The key, if `raw` (the header's bytes) is 1 to 255 printable ASCII
/// characters (space to `~`).
pub fn parse_key(raw: &[u8]) -> Option<&str> {
    if raw.is_empty() || raw.len() > MAX_LEN || !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    std::str::from_utf8(raw).ok()
}

/// Keys are per caller: the same key from two POS terminals is two keys. A
/// token's callers share its name; anonymous callers (loopback) share one scope.
pub fn scope(caller: &Caller) -> String {
    match caller {
        Caller::Token { name, .. } => format!("token:{name}"),
        _ => "anonymous".to_string(),
    }
}

/// SHA-256 (hex) of the body's canonical JSON: object keys sorted, no
/// whitespace. The same order sent with other spacing or key order has the
/// same fingerprint; any other value does not.
pub fn request_hash(body: &Value) -> String {
    let mut canon = String::new();
    canonical(body, &mut canon);
    Sha256::digest(canon.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The key as a log line may show it: at most 16 characters, then an ellipsis.
pub fn for_log(key: &str) -> String {
    match key.char_indices().nth(16) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::access::Role;
    use serde_json::json;

    #[test]
    fn keys_are_1_to_255_printable_ascii() {
        assert_eq!(parse_key(b"pos-1:order-42"), Some("pos-1:order-42"));
        assert_eq!(parse_key(b"a b"), Some("a b"));
        assert_eq!(parse_key(&[b'k'; 255]).map(str::len), Some(255));
        assert_eq!(parse_key(&[b'k'; 256]), None);
        assert_eq!(parse_key(b""), None);
        assert_eq!(parse_key(b"tab\there"), None);
        assert_eq!(parse_key("caf\u{e9}".as_bytes()), None);
        assert_eq!(parse_key(b"del\x7f"), None);
    }

    #[test]
    fn fingerprint_ignores_spacing_and_key_order_only() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "s"}], "a": 1.5}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":1.5,"b":[1,{"x":"s","y":2}]}"#).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_eq!(request_hash(&a).len(), 64);
        let c = json!({"a": 1.5, "b": [{"x": "s", "y": 2}, 1]});
        assert_ne!(request_hash(&a), request_hash(&c));
        assert_ne!(
            request_hash(&json!({"a": "1"})),
            request_hash(&json!({"a": 1}))
        );
    }

    #[test]
    fn scopes_separate_callers() {
        let pos = Caller::Token {
            name: "till-1".into(),
            role: Role::Pos,
        };
        assert_eq!(scope(&pos), "token:till-1");
        assert_eq!(scope(&Caller::Anonymous), "anonymous");
    }

    #[test]
    fn log_form_is_short() {
        assert_eq!(for_log("short"), "short");
        assert_eq!(for_log(&"k".repeat(200)), format!("{}…", "k".repeat(16)));
    }
}
