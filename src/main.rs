//! The `restaurant-system` binary: parse flags, load config, start a mode, wait
//! for a signal, shut down cleanly. Everything else lives in the library.

use clap::{Parser, Subcommand};
use restaurant_system::domain::access::{self, Role};
use restaurant_system::domain::OrderType;
use restaurant_system::modes::{self, Mode, Options};
use restaurant_system::process::config::{config_path, Config, StorageBackend, WorkerFile};
use restaurant_system::process::{daemon, owner, telemetry};
use restaurant_system::services::kitchen::{WorkerConfig, WorkerError};
use restaurant_system::services::StartError;
use restaurant_system::storage;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit code for bad flags or config (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;
/// `restore` refused: the services still use the database.
const EXIT_IN_USE: u8 = 3;

/// Environment variables that stand in for flags.
const FLAG_ENV: [&str; 4] = [
    "RESTAURANT_CONFIG",
    "RESTAURANT_WORKER_NAME",
    "RESTAURANT_WORKER_ORDER_TYPES",
    "RESTAURANT_WORKER_PREFETCH",
];

/// Restaurant order system for a kitchen edge box.
///
/// Run one mode per process (each a systemd unit), or --mode=all for everything
/// in one process. Config: --config FILE, else /etc/restaurant-system/config.toml,
/// else ./config.toml; environment variables DB_*, RABBITMQ_* and
/// RESTAURANT_<SECTION>__<KEY> override the file; flags override both.
#[derive(Parser, Debug)]
#[command(name = "restaurant-system", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The mode to run.
    #[arg(long, value_enum)]
    mode: Option<Mode>,

    /// Config file (TOML; a .yaml file is read as the spec's config.yaml).
    #[arg(long, short = 'c', global = true, env = "RESTAURANT_CONFIG")]
    config: Option<PathBuf>,

    /// HTTP port (order-service: 3000, tracking-service: 3002, display-bridge health: 3003).
    #[arg(long)]
    port: Option<u16>,

    /// Order service: requests handled at once; more wait up to `[http] queue_timeout_ms`, then get 503.
    #[arg(long)]
    max_concurrent: Option<usize>,

    /// Kitchen worker: unique name, e.g. chef_mario. Several, comma-separated
    /// (chef_mario,chef_luigi): that many workers in one process, each with
    /// its own queue consumer and prefetch (cheaper than one process each).
    #[arg(long, env = "RESTAURANT_WORKER_NAME")]
    worker_name: Option<String>,

    /// Kitchen worker: comma-separated order types it cooks (dine_in,takeout,delivery); all when omitted.
    #[arg(long, env = "RESTAURANT_WORKER_ORDER_TYPES")]
    order_types: Option<String>,

    /// Kitchen worker: orders held at once (RabbitMQ prefetch) [default: 1].
    #[arg(long, env = "RESTAURANT_WORKER_PREFETCH",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    prefetch: Option<u16>,

    /// Kitchen worker: seconds between heartbeats [default: 30].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_interval: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the database schema and exit.
    Migrate,
    /// Check the configuration and exit (0 when valid, 2 when not).
    Validate,
    /// Manage API tokens (see docs/security.md).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Write a consistent copy of the database while the services run (SQLite: a
    /// database file; PostgreSQL: a pg_dump archive). Without FILE: a dated copy in
    /// `[backup] directory`, keeping the newest `[backup] keep`.
    Backup {
        /// Where to write the copy.
        file: Option<PathBuf>,
        /// FILE was not given: a dated copy, and the old ones are pruned.
        #[arg(skip)]
        dated: bool,
    },
    /// Replace the database with a backup; the services must be stopped (exit 3 while
    /// anything uses the database). Checks the result and prints its counts.
    Restore {
        /// A file written by `backup`.
        file: PathBuf,
    },
    /// The box's certificate (see docs/security.md).
    Tls {
        #[command(subcommand)]
        action: TlsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Print the CA's SHA-256 fingerprint (compare it on a device before trusting
    /// the CA), the names in the server certificate and when it ends.
    Show,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; it is printed once, as the last line, and stored only as a hash.
    Create {
        /// A name for the device or person, e.g. kds-grill or pos-1.
        name: String,
        /// pos (orders, reads), kitchen (bump, recall, reads) or manager (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List tokens: name, role, created, last used (never the token).
    List,
    /// Revoke a token; running services refuse it within a second.
    Revoke { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn main() -> ExitCode {
    // systemd passes `Environment=RESTAURANT_WORKER_PREFETCH=` (empty) through;
    // empty means "not set", not an invalid value. Done before any thread exists.
    for k in FLAG_ENV {
        if std::env::var_os(k).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(k);
        }
    }
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(msg) => return usage_error(&msg),
    };
    if let Some(Command::Backup {
        file: file @ None,
        dated,
    }) = &mut cli.command
    {
        *file = Some(cfg.backup.directory.join(storage::backup::dated_name(
            cfg.database.resolved_backend(),
            chrono::Utc::now(),
        )));
        *dated = true;
    }
    // Everything but `validate` may create the SQLite database: as root, do it as
    // the services' user (see process::owner). Before any thread exists.
    if !matches!(cli.command, Some(Command::Validate))
        && cfg.database.resolved_backend() == StorageBackend::Sqlite
    {
        if let Err(e) = owner::become_state_owner(&cfg.database.sqlite_path) {
            eprintln!("restaurant-system: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    } else if let Some(Command::Backup {
        file: Some(file), ..
    }) = &cli.command
    {
        // A PostgreSQL backup is a file of ours too: the owner of its directory's.
        if let Err(e) = owner::become_state_owner(file) {
            eprintln!("restaurant-system: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    match cli.command {
        Some(Command::Validate) => {
            println!(
                "configuration OK: database backend {:?} ({}), RabbitMQ {}:{}, MQTT {}:{}",
                cfg.database.resolved_backend(),
                cfg.database.backend_reason(),
                cfg.rabbitmq.host,
                cfg.rabbitmq.port,
                cfg.mqtt.host,
                cfg.mqtt.port
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Migrate) => return migrate(&cfg),
        Some(Command::Token { action }) => return token(&cfg, action),
        Some(Command::Backup { file, dated }) => {
            let file = file.unwrap_or_else(|| cfg.backup.directory.clone());
            return backup(&cfg, &file, dated);
        }
        Some(Command::Restore { file }) => return restore(&cfg, &file),
        Some(Command::Tls {
            action: TlsCommand::Show,
        }) => return tls_show(&cfg),
        None => {}
    }
    let Some(mode) = cli.mode else {
        return usage_error(
            "--mode is required: order-service, kitchen-worker, tracking-service, notification-subscriber, display-bridge or all (see --help)",
        );
    };
    let workers = match worker_configs(&cli, mode, &cfg) {
        Ok(w) => w,
        Err(msg) => return usage_error(&msg),
    };
    let log = telemetry::init(&cfg.log, mode.service_name());
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let config_file = config_path(cli.config.as_deref()).ok().flatten();
    runtime.block_on(run(mode, cfg, Options { workers }, log, config_file))
}

async fn run(
    mode: Mode,
    cfg: Config,
    opts: Options,
    log: telemetry::LogHandle,
    config_file: Option<PathBuf>,
) -> ExitCode {
    let shutdown = CancellationToken::new();
    if let Err(e) = daemon::spawn_signal_handler(shutdown.clone(), log, config_file) {
        eprintln!("restaurant-system: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let running = match modes::start(mode, &cfg, opts, shutdown.clone()).await {
        Ok(r) => r,
        Err(StartError::Cancelled) => return ExitCode::SUCCESS,
        Err(e) => {
            let hint = match &e {
                StartError::Worker(WorkerError::AlreadyOnline { .. }) => "",
                StartError::Bind { .. } => " (is another process using the port?)",
                _ => "",
            };
            eprintln!("restaurant-system: {e}{hint}");
            shutdown.cancel();
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    daemon::ready();
    daemon::spawn_watchdog(shutdown.clone());
    // A link that stopped for good leaves a quiet part nobody restarts: stop
    // the rest cleanly and exit non-zero, so systemd's Restart=on-failure
    // starts us again (and the watchdog pings stop with the process).
    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = running.failed() => Some(why),
    };
    if let Some(why) = &failed {
        tracing::error!(action = "service_failed", error = %why, "Stopping: a part stopped for good; exiting to be restarted");
        daemon::stopping();
        shutdown.cancel();
    }
    // Give in-flight work its chance to finish (an order being cooked, a relay
    // flush); systemd's TimeoutStopSec is the outer bound.
    running.wait().await;
    if failed.is_some() {
        return ExitCode::from(EXIT_FAILURE);
    }
    tracing::info!(action = "service_stopped", "Stopped cleanly");
    ExitCode::SUCCESS
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    let path = config_path(cli.config.as_deref()).map_err(|e| e.to_string())?;
    let mut cfg = Config::load(path.as_deref()).map_err(|e| {
        let msg = e.to_string();
        match &path {
            // Parse errors name the file already; rule checks (a value out of
            // range) do not, and the value may come from the file or the environment.
            Some(p) if !msg.contains(&*p.to_string_lossy()) => {
                format!("{msg} (config file {} and environment)", p.display())
            }
            _ => msg,
        }
    })?;
    if let Some(port) = cli.port {
        match cli.mode {
            Some(Mode::TrackingService) => cfg.http.tracking_port = port,
            Some(Mode::DisplayBridge) => cfg.http.bridge_port = port,
            _ => cfg.http.order_port = port,
        }
    }
    if let Some(n) = cli.max_concurrent {
        if n == 0 {
            return Err("--max-concurrent must be at least 1".into());
        }
        cfg.http.max_concurrent = n;
    }
    Ok(cfg)
}

/// The workers of a kitchen process: one per name in `--worker-name`.
fn worker_configs(cli: &Cli, mode: Mode, cfg: &Config) -> Result<Vec<WorkerConfig>, String> {
    if mode == Mode::KitchenWorker && cfg.routing().is_some() {
        return Err(
            "--mode=kitchen-worker cooks whole orders on a timer; with [stations] configured the cooks bump items at their stations: run no kitchen worker (docs/stations.md)"
                .into(),
        );
    }
    let names: Vec<String> = match (mode, cli.worker_name.as_deref().map(str::trim)) {
        (Mode::KitchenWorker, None | Some("")) => return Err(
            "--worker-name is required for --mode=kitchen-worker (e.g. --worker-name=chef_mario)"
                .into(),
        ),
        (_, Some(list)) if !list.is_empty() => list
            .split(',')
            .map(|n| {
                let n = n.trim();
                if !restaurant_system::domain::is_plain_name(n) {
                    return Err(format!(
                        "--worker-name '{n}': use 1-64 letters, digits, '_', '-' or '.'"
                    ));
                }
                Ok(n.to_string())
            })
            .collect::<Result<_, _>>()?,
        _ => vec![restaurant_system::services::kitchen::default_worker_name()],
    };
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(format!("--worker-name '{twice}' is given twice"));
    }
    if !matches!(mode, Mode::KitchenWorker | Mode::All) {
        return Ok(Vec::new());
    }
    names
        .into_iter()
        .map(|name| worker_config(cli, cfg, name))
        .collect()
}

fn worker_config(cli: &Cli, cfg: &Config, name: String) -> Result<WorkerConfig, String> {
    // Flags (or their environment variables) > the worker's own file > defaults.
    let file = WorkerFile::load(&cfg.kitchen.workers_dir, &name).map_err(|e| e.to_string())?;
    let types = cli.order_types.clone().or(file.order_types);
    let order_types = match types.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<OrderType>()
                    .map_err(|e| format!("--order-types: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let prefetch = cli.prefetch.or(file.prefetch).unwrap_or(1);
    let heartbeat = cli
        .heartbeat_interval
        .or(file.heartbeat_interval)
        .unwrap_or(30);
    if !(1..=1000).contains(&prefetch) || !(1..=3600).contains(&heartbeat) {
        return Err("prefetch must be 1-1000 and heartbeat_interval 1-3600".into());
    }
    Ok(WorkerConfig {
        name,
        order_types,
        prefetch,
        heartbeat: Duration::from_secs(heartbeat),
        cooking: cfg.kitchen.cooking_seconds,
    })
}

/// The async runtime, or the exit code when it cannot start.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("restaurant-system: cannot start the async runtime: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// `tls show`: reads the certificates; makes nothing (the services make the
/// self-signed ones at their first start, as the service user).
fn tls_show(cfg: &Config) -> ExitCode {
    use restaurant_system::process::config::TlsMode;
    use restaurant_system::tls::ca;
    let describe = |what: &str, pem: &str| match ca::summary(pem) {
        Ok(s) => {
            println!("{what}: {}", s.subject);
            println!("  SHA-256 fingerprint: {}", s.fingerprint);
            if !s.names.is_empty() {
                println!("  names: {}", s.names.join(", "));
            }
            println!("  expires: {}", s.not_after);
            true
        }
        Err(e) => {
            eprintln!("restaurant-system: {what}: {e}");
            false
        }
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let result = match cfg.tls.mode {
        TlsMode::Off => {
            println!("TLS is off ([tls] mode = \"off\"): the services speak plain HTTP");
            return ExitCode::SUCCESS;
        }
        TlsMode::SelfSigned => match (ca::ca_in(&cfg.tls.dir), ca::server_in(&cfg.tls.dir)) {
            (Ok(Some(ca_pem)), Ok(server)) => {
                let mut ok = describe("CA", &ca_pem);
                match server {
                    Some(s) => ok &= describe("server certificate", &s),
                    None => println!("server certificate: not issued yet"),
                }
                Ok(ok)
            }
            (Ok(None), _) => Err(format!(
                "no CA in {} yet: the order or tracking service makes it at its first start",
                cfg.tls.dir.display()
            )),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        },
        TlsMode::Files => read(&cfg.tls.cert_file).map(|pem| describe("server certificate", &pem)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            eprintln!("restaurant-system: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `token create|list|revoke`: works on the database directly; the running
/// services pick changes up within a second.
fn token(cfg: &Config, action: TokenCommand) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        if let TokenCommand::Create { name, .. } | TokenCommand::Revoke { name } = &action {
            if let Err(msg) = access::check_token_name(name) {
                return usage_error(&msg);
            }
        }
        let store = match storage::open_in(&cfg.database, &cfg.cluster).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("restaurant-system: cannot open the database: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let failed = |e: storage::StoreError| {
            eprintln!("restaurant-system: {e}");
            ExitCode::from(EXIT_FAILURE)
        };
        match action {
            TokenCommand::Create { name, role } => {
                let token = access::token_from_bytes(rand::random());
                let hash = access::hash_token(&token);
                match store.create_token(&name, role, &hash, chrono::Utc::now()).await {
                    Ok(true) => {
                        println!("Created token '{name}' with role {role}. It is shown only this once: copy it now.");
                        println!("Send it as the header  Authorization: Bearer <token>  (revoke: restaurant-system token revoke {name})");
                        println!("{token}");
                        ExitCode::SUCCESS
                    }
                    Ok(false) => usage_error(&format!(
                        "a token named '{name}' already exists (revoke it first, or choose another name)"
                    )),
                    Err(e) => failed(e),
                }
            }
            TokenCommand::List => match store.tokens().await {
                Ok(rows) => {
                    println!("{:<24} {:<8} {:<25} LAST USED", "NAME", "ROLE", "CREATED");
                    let fmt = |t: chrono::DateTime<chrono::Utc>| {
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    };
                    for r in rows {
                        println!(
                            "{:<24} {:<8} {:<25} {}",
                            r.name,
                            r.role.as_str(),
                            fmt(r.created_at),
                            r.last_used_at.map(fmt).unwrap_or_else(|| "never".into())
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => failed(e),
            },
            TokenCommand::Revoke { name } => match store.revoke_token(&name).await {
                Ok(true) => {
                    println!("Revoked token '{name}'; running services refuse it within a second.");
                    ExitCode::SUCCESS
                }
                Ok(false) => usage_error(&format!("no token named '{name}' (see: restaurant-system token list)")),
                Err(e) => failed(e),
            },
        }
    })
}

/// `backup [FILE]`: FILE, or a dated copy in `[backup] directory`, after which
/// the oldest copies beyond `[backup] keep` there are removed.
fn backup(cfg: &Config, file: &std::path::Path, dated: bool) -> ExitCode {
    use storage::backup;
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let dir = &cfg.backup.directory;
    let db = &cfg.database;
    if dated && db.resolved_backend() == StorageBackend::Sqlite && !db.sqlite_path.exists() {
        // The nightly timer on a box whose services never ran: not a failure.
        println!(
            "no database at {} yet: nothing to back up",
            db.sqlite_path.display()
        );
        return ExitCode::SUCCESS;
    }
    if dated {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("restaurant-system: backup: creating {}: {e}", dir.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    match runtime.block_on(backup::backup(&cfg.database, file)) {
        Ok(summary) => println!("backup written: {} ({summary})", file.display()),
        Err(e) => {
            eprintln!("restaurant-system: backup failed: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if dated {
        match backup::prune(dir, cfg.backup.keep as usize) {
            Ok(removed) => {
                for p in removed {
                    println!("removed old backup: {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("restaurant-system: removing old backups: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    ExitCode::SUCCESS
}

fn restore(cfg: &Config, file: &std::path::Path) -> ExitCode {
    use storage::backup::{self, BackupError};
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(backup::restore(&cfg.database, file)) {
        Ok(summary) => {
            println!(
                "restored {} ({summary}); integrity checked. Start the services: systemctl start restaurant-system.target",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ BackupError::InUse(_)) => {
            eprintln!("restaurant-system: restore refused: {e}");
            ExitCode::from(EXIT_IN_USE)
        }
        Err(e) => {
            eprintln!("restaurant-system: restore failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn migrate(cfg: &Config) -> ExitCode {
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(storage::open_in(&cfg.database, &cfg.cluster)) {
        Ok(store) => {
            println!("schema is up to date ({} backend)", store.backend());
            if cfg.database.resolved_backend() == StorageBackend::Sqlite {
                // Once, for a database too large to switch at a service's start.
                if let Err(e) = storage::sqlite::reclaim_space(&cfg.database.sqlite_path) {
                    eprintln!("restaurant-system: switching to incremental vacuum: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("restaurant-system: migration failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// --help and --version print as clap prints them; a usage error is one line.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
    if matches!(e.kind(), DisplayHelp | DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let hint = text
        .lines()
        .find(|l| l.trim_start().starts_with("[possible values"))
        .map(|l| format!(" {}", l.trim()))
        .unwrap_or_default();
    usage_error(&format!("{first}{hint} (see --help)"))
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("restaurant-system: {msg}");
    ExitCode::from(EXIT_USAGE)
}
