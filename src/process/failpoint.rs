//! Failpoints for the fault suite (tests/it/fault.rs): with
//! `RESTAURANT_FAILPOINT=NAME:N` in the environment, the process aborts the Nth
//! time it passes `hit(NAME)`, as a power cut or `kill -9` would stop it at
//! that line. Always compiled in, inert unless the variable is set: without it,
//! `hit` is one read of an initialised cell. Failpoints:
//!
//! - `crash_after_commit`: an order was committed (order intake), and its answer
//!   not yet sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "RESTAURANT_FAILPOINT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static PASSED: AtomicU64 = AtomicU64::new(0);

/// `NAME:N` with N >= 1, else None.
fn parse(spec: &str) -> Option<(String, u64)> {
    let (name, n) = spec.trim().split_once(':')?;
    let n: u64 = n.parse().ok().filter(|n| *n >= 1)?;
    (!name.is_empty()).then(|| (name.to_string(), n))
}

/// Aborts the process if `name` is the armed failpoint and this is its Nth pass.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().as_deref().and_then(parse));
    let Some((armed, at)) = armed else { return };
    if armed != name {
        return;
    }
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("failpoint {name}:{at} reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse("crash_after_commit:3"),
            Some(("crash_after_commit".into(), 3))
        );
        assert_eq!(parse("crash_after_commit:0"), None);
        assert_eq!(parse("crash_after_commit"), None);
        assert_eq!(parse(":2"), None);
        assert_eq!(parse("x:y"), None);
    }
}
