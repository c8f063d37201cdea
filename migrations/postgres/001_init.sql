-- Schema of the origin spec (orders, order_items, order_status_log, workers),
-- plus the daily order counter and the transactional outbox.

create table if not exists orders (
    "id"                   serial        primary key,
    "created_at"           timestamptz   not null default now(),
    "updated_at"           timestamptz   not null default now(),
    "number"               text          unique not null,
    "customer_name"        text          not null,
    "type"                 text          not null check (type in ('dine_in', 'takeout', 'delivery')),
    "table_number"         integer,
    "delivery_address"     text,
    "total_amount"         decimal(10,2) not null,
    "priority"             integer       default 1,
    "status"               text          default 'received'
                           check (status in ('received', 'cooking', 'ready', 'completed', 'cancelled')),
    "processed_by"         text,
    "completed_at"         timestamptz,
    -- Beyond the spec: when cooking should end, and a per-order change counter.
    "estimated_completion" timestamptz,
    "version"              bigint        not null default 1
);
create index if not exists orders_open_idx on orders (status) where status in ('received', 'cooking', 'ready');

create table if not exists order_items (
    "id"          serial        primary key,
    "created_at"  timestamptz   not null default now(),
    "order_id"    integer       references orders(id),
    "name"        text          not null,
    "quantity"    integer       not null,
    "price"       decimal(8,2)  not null
);
create index if not exists order_items_order_idx on order_items (order_id);

create table if not exists order_status_log (
    "id"          serial        primary key,
    "created_at"  timestamptz   not null default now(),
    "order_id"    integer       references orders(id),
    "status"      text,
    "changed_by"  text,
    "changed_at"  timestamptz   default current_timestamp,
    "notes"       text
);
create index if not exists order_status_log_order_idx on order_status_log (order_id);

create table if not exists workers (
    "id"                 serial      primary key,
    "created_at"         timestamptz not null default now(),
    "name"               text        unique not null,
    "type"               text        not null,
    "status"             text        default 'online',
    "last_seen"          timestamptz default current_timestamp,
    "orders_processed"   integer     default 0,
    "heartbeat_interval" integer     not null default 30
);

-- One row per UTC day; the upsert's row lock serialises concurrent orders.
create table if not exists daily_order_counters (
    "date"  date    primary key,
    "last"  integer not null
);

create table if not exists outbox (
    "id"           bigserial   primary key,
    "created_at"   timestamptz not null default now(),
    "exchange"     text        not null,
    "routing_key"  text        not null,
    "payload"      text        not null,
    "priority"     smallint    not null default 0,
    "message_id"   text        not null,
    "request_id"   text        not null default '',
    "lease_until"  timestamptz
);
