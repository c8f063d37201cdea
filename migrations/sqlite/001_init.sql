-- The same tables as migrations/postgres, in SQLite's dialect. Money is integer
-- cents (SQLite has no exact decimal type); timestamps are fixed-width UTC
-- RFC 3339 text, so text order is time order.

create table if not exists orders (
    id                   integer primary key autoincrement,
    created_at           text    not null,
    updated_at           text    not null,
    number               text    unique not null,
    customer_name        text    not null,
    type                 text    not null check (type in ('dine_in', 'takeout', 'delivery')),
    table_number         integer,
    delivery_address     text,
    total_cents          integer not null,
    priority             integer not null default 1,
    status               text    not null default 'received'
                         check (status in ('received', 'cooking', 'ready', 'completed', 'cancelled')),
    processed_by         text,
    completed_at         text,
    estimated_completion text,
    version              integer not null default 1
);
create index if not exists orders_status_idx on orders (status);

create table if not exists order_items (
    id          integer primary key autoincrement,
    created_at  text    not null,
    order_id    integer not null references orders(id),
    name        text    not null,
    quantity    integer not null,
    price_cents integer not null
);
create index if not exists order_items_order_idx on order_items (order_id);

create table if not exists order_status_log (
    id          integer primary key autoincrement,
    created_at  text    not null,
    order_id    integer not null references orders(id),
    status      text    not null,
    changed_by  text    not null,
    changed_at  text    not null,
    notes       text
);
create index if not exists order_status_log_order_idx on order_status_log (order_id);

create table if not exists workers (
    id                 integer primary key autoincrement,
    created_at         text    not null,
    name               text    unique not null,
    type               text    not null,
    status             text    not null default 'online',
    last_seen          text    not null,
    orders_processed   integer not null default 0,
    heartbeat_interval integer not null default 30
);

create table if not exists daily_order_counters (
    date  text    primary key,
    last  integer not null
);

create table if not exists outbox (
    id           integer primary key autoincrement,
    created_at   text    not null,
    exchange     text    not null,
    routing_key  text    not null,
    payload      text    not null,
    priority     integer not null default 0,
    message_id   text    not null,
    request_id   text    not null default '',
    lease_until  text
);
