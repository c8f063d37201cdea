//! Schema migrations, embedded in the binary. One folder per backend because the
//! SQL dialects differ; both define the same tables. Applied at start by every
//! mode, idempotently, and recorded in `schema_migrations`.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The migrations, one list for both backends (they define the same tables):
/// migration `N => NAME` is `migrations/{postgres,sqlite}/NAME.sql`.
macro_rules! migrations {
    ($($version:literal => $name:literal),+ $(,)?) => {
        pub const POSTGRES: &[Migration] = &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/postgres/", $name, ".sql")),
        }),+];
        pub const SQLITE: &[Migration] = &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/sqlite/", $name, ".sql")),
        }),+];
    };
}

migrations! {
    1 => "001_init",
    2 => "002_outbox_owner",
    3 => "003_api_tokens",
    4 => "004_kitchen_notes",
    5 => "005_idempotency_keys",
    6 => "006_stations",
}
