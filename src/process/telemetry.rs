//! Logging: the spec's JSON lines on stdout, or journald under systemd.
//!
//! Code logs with plain `tracing` macros and a few well-known fields:
//!
//! ```ignore
//! tracing::info!(action = "order_created", order_number = %n, "Order created");
//! tracing::error!(action = "db_transaction_failed", error = %e, "Could not store the order");
//! ```
//!
//! `action`, `request_id` and `service` become top-level keys, `error` becomes the
//! spec's `error: {msg, stack}` object, and every other field goes under
//! `details`. `service` and `request_id` are usually inherited from an enclosing
//! span (each mode runs inside `service_span`, each HTTP request inside a span
//! carrying its request id), so call sites do not repeat them.

use crate::process::config::{LogConfig, LogFormat};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt::Debug;
use std::io::Write;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Fields named differently in code (and so in the journal, where a field is
/// its name upper-cased) than in the spec's JSON lines, because the spec's
/// name is one journald keeps for itself: `priority` would become a second
/// `PRIORITY` (the syslog level), and `journalctl -p alert` would list every
/// small order; `message_id` would be read as a journal catalog id. Pairs of
/// (name in code and journal, name in the JSON line).
const SPEC_NAMES: &[(&str, &str)] = &[
    ("order_priority", "priority"),
    ("amqp_message_id", "message_id"),
];

/// True when a field of ours, upper-cased as tracing-journald writes it,
/// would clash with a field journald or tracing-journald sets themselves.
pub fn journal_reserved(field: &str) -> bool {
    let f = field.to_ascii_uppercase().replace('.', "_");
    const EXACT: &[&str] = &[
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
        "TARGET",
        "SPAN_NAME",
    ];
    const PREFIXES: &[&str] = &["_", "CODE_", "SYSLOG_", "OBJECT_", "COREDUMP_", "SPAN_"];
    EXACT.contains(&f.as_str()) || PREFIXES.iter().any(|p| f.starts_with(p))
}

/// Renames our journal-safe field names back to the spec's, for JSON lines.
fn to_spec_names(fields: &mut Map<String, Value>) {
    for (ours, spec) in SPEC_NAMES {
        if let Some(v) = fields.remove(*ours) {
            fields.insert((*spec).to_string(), v);
        }
    }
}

/// The span every mode runs in: names the service on each of its log lines.
pub fn service_span(service: &'static str) -> tracing::Span {
    tracing::info_span!("service", service = service)
}

/// Lets SIGHUP change the log level of a running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.reload
            .reload(filter_for(level))
            .map_err(|e| e.to_string())
    }
}

/// Our level for our code; the libraries' chatter (a line per AMQP channel
/// opened) only from warnings up, unless the level names targets itself.
fn filter_for(level: &str) -> EnvFilter {
    let spec = if level.contains('=') {
        level.to_string()
    } else {
        format!("{level},lapin=warn,amq_protocol=warn,hyper=warn,rumqttc=warn,tokio_postgres=warn")
    };
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Journald when configured, or in `auto` when
/// systemd connected our stdout to the journal; JSON lines on stdout otherwise
/// (and when the journal socket is missing, as in containers and CI).
pub fn init(cfg: &LogConfig, default_service: &'static str) -> LogHandle {
    let filter = filter_for(&cfg.level);
    let (filter, reload) = reload::Layer::new(filter);
    let want_journal = match cfg.format {
        LogFormat::Journald => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let journal = want_journal
        .then(|| {
            tracing_journald::layer().ok().map(|l| {
                l.with_field_prefix(None)
                    .with_syslog_identifier("restaurant-system".into())
            })
        })
        .flatten();
    let json = journal.is_none().then(|| JsonLayer::new(default_service));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(json)
        .try_init();
    LogHandle { reload }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Fields of a span, kept so events inside it can inherit `service` and `request_id`.
#[derive(Default)]
struct SpanFields(Map<String, Value>);

struct JsonLayer {
    hostname: String,
    default_service: &'static str,
}

impl JsonLayer {
    fn new(default_service: &'static str) -> Self {
        JsonLayer {
            hostname: hostname(),
            default_service,
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    service: String,
    action: String,
    message: String,
    hostname: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    details: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObj>,
}

#[derive(Serialize)]
struct ErrorObj {
    msg: String,
    stack: String,
}

#[derive(Default)]
struct Collect {
    fields: Map<String, Value>,
    error_chain: Option<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The cause chain stands in for a stack trace: it says where the error came from.
        let mut chain = Vec::new();
        let mut cur = value.source();
        while let Some(e) = cur {
            chain.push(e.to_string());
            cur = e.source();
        }
        self.error_chain = Some((value.to_string(), chain.join("\ncaused by: ")));
        self.fields
            .insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.fields
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        attrs.record(&mut c);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(c.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        values.record(&mut c);
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<SpanFields>() {
                f.0.extend(c.fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        let mut fields = c.fields;
        to_spec_names(&mut fields);

        // Inherit service and request_id from the enclosing spans, innermost first.
        let mut service = None;
        let mut request_id = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let ext = span.extensions();
                if let Some(SpanFields(f)) = ext.get::<SpanFields>() {
                    if service.is_none() {
                        service = f.get("service").and_then(Value::as_str).map(String::from);
                    }
                    if request_id.is_none() {
                        request_id = f
                            .get("request_id")
                            .and_then(Value::as_str)
                            .map(String::from);
                    }
                }
            }
        }
        let take_str = |fields: &mut Map<String, Value>, k: &str| match fields.remove(k) {
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        let message = take_str(&mut fields, "message").unwrap_or_default();
        let action = take_str(&mut fields, "action")
            .unwrap_or_else(|| event.metadata().target().replace("::", "."));
        let service = take_str(&mut fields, "service")
            .or(service)
            .unwrap_or_else(|| self.default_service.to_string());
        let request_id = take_str(&mut fields, "request_id")
            .or(request_id)
            .unwrap_or_default();
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        let error = if *event.metadata().level() == Level::ERROR {
            let (msg, stack) = c.error_chain.unwrap_or_else(|| {
                let msg = take_str(&mut fields, "error").unwrap_or_else(|| message.clone());
                (msg, String::new())
            });
            fields.remove("error");
            Some(ErrorObj { msg, stack })
        } else {
            None
        };
        let line = Line {
            timestamp: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            level,
            service,
            action,
            message,
            hostname: &self.hostname,
            request_id,
            details: fields,
            error,
        };
        if let Ok(mut buf) = serde_json::to_vec(&line) {
            buf.push(b'\n');
            // One write per line, so lines from several threads never interleave.
            let _ = std::io::stdout().lock().write_all(&buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_names_are_recognised() {
        for f in [
            "priority",
            "message_id",
            "code_line",
            "syslog_identifier",
            "errno",
            "target",
        ] {
            assert!(journal_reserved(f), "{f}");
        }
        for f in [
            "action",
            "order_number",
            "order_priority",
            "request_id",
            "worker",
        ] {
            assert!(!journal_reserved(f), "{f}");
        }
    }

    #[test]
    fn json_lines_keep_the_spec_names() {
        let mut m = Map::new();
        m.insert("order_priority".into(), 10.into());
        m.insert("order_number".into(), "ORD_20261125_001".into());
        to_spec_names(&mut m);
        assert_eq!(m.get("priority"), Some(&Value::from(10)));
        assert!(!m.contains_key("order_priority"));
        assert_eq!(m.len(), 2);
    }

    /// The field names given to tracing's macros in `src` (before the message).
    fn logged_field_names() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("reading src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let macros = [
            "info!(", "warn!(", "error!(", "debug!(", "trace!(", "_span!(", "event!(",
        ];
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            for m in macros {
                for (at, _) in text.match_indices(m) {
                    for arg in top_level_args(&text[at + m.len()..]) {
                        let arg = arg.trim();
                        if arg.starts_with('"') {
                            break; // the message; what follows are format arguments
                        }
                        let name = arg.trim_start_matches(['%', '?']);
                        let name = match name.split_once('=') {
                            Some((n, v)) if !v.starts_with('=') => n.trim(),
                            Some(_) => continue,
                            None => name,
                        };
                        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
                        if !name.is_empty() && name.chars().all(ident) {
                            found.push((file.display().to_string(), name.to_string()));
                        }
                    }
                }
            }
        }
        found
    }

    /// The comma-separated arguments up to the closing parenthesis.
    fn top_level_args(s: &str) -> Vec<&str> {
        let (mut depth, mut in_str, mut escaped, mut start) = (0i32, false, false, 0);
        let mut args = Vec::new();
        for (i, c) in s.char_indices() {
            if in_str {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    args.push(&s[start..i]);
                    return args;
                }
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        args
    }

    #[test]
    fn no_logged_field_collides_with_journald() {
        let names = logged_field_names();
        let all: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
        // The scan really sees the fields (so an empty scan cannot pass).
        for f in ["action", "order_number", "order_priority", "worker"] {
            assert!(all.contains(&f), "{f} not found among {all:?}");
        }
        let clashes: Vec<_> = names
            .iter()
            .filter(|(_, n)| n != "message" && journal_reserved(n))
            .collect();
        assert!(clashes.is_empty(), "fields journald reserves: {clashes:?}");
    }
}
