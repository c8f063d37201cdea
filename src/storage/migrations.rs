//! Schema migrations, embedded in the binary. One folder per backend because the
//! SQL dialects differ; both define the same tables. Applied at start by every
//! mode, idempotently, and recorded in `schema_migrations`.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "001_init",
        sql: include_str!("../../migrations/postgres/001_init.sql"),
    },
    Migration {
        version: 2,
        name: "002_outbox_owner",
        sql: include_str!("../../migrations/postgres/002_outbox_owner.sql"),
    },
    Migration {
        version: 3,
        name: "003_api_tokens",
        sql: include_str!("../../migrations/postgres/003_api_tokens.sql"),
    },
    Migration {
        version: 4,
        name: "004_kitchen_notes",
        sql: include_str!("../../migrations/postgres/004_kitchen_notes.sql"),
    },
    Migration {
        version: 5,
        name: "005_idempotency_keys",
        sql: include_str!("../../migrations/postgres/005_idempotency_keys.sql"),
    },
];

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "001_init",
        sql: include_str!("../../migrations/sqlite/001_init.sql"),
    },
    Migration {
        version: 2,
        name: "002_outbox_owner",
        sql: include_str!("../../migrations/sqlite/002_outbox_owner.sql"),
    },
    Migration {
        version: 3,
        name: "003_api_tokens",
        sql: include_str!("../../migrations/sqlite/003_api_tokens.sql"),
    },
    Migration {
        version: 4,
        name: "004_kitchen_notes",
        sql: include_str!("../../migrations/sqlite/004_kitchen_notes.sql"),
    },
    Migration {
        version: 5,
        name: "005_idempotency_keys",
        sql: include_str!("../../migrations/sqlite/005_idempotency_keys.sql"),
    },
];
