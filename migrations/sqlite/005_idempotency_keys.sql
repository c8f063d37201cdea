-- Issue 14: the same table as migrations/postgres (see there). Timestamps are
-- fixed-width UTC RFC 3339 text, so text order is time order.
create table if not exists idempotency_keys (
    scope         text    not null,
    key           text    not null,
    request_hash  text    not null,
    order_number  text,
    total_cents   integer not null default 0,
    priority      integer not null default 1,
    created_at    text    not null,
    expires_at    text    not null,
    primary key (scope, key)
);
create index if not exists idempotency_keys_expires_idx on idempotency_keys (expires_at);
