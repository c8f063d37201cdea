-- Issue 14: `Idempotency-Key` on POST /orders. One row per (caller, key),
-- inserted in the same transaction as the order it made, so a key exists if and
-- only if its order does; the primary key makes concurrent requests with one
-- key wait for each other, and the loser reads the winner's answer. The answer
-- (number, total, priority) is kept so a replay needs no join. Rows past
-- `expires_at` are ignored, and swept by the order service.
create table if not exists idempotency_keys (
    scope         text        not null,
    key           text        not null,
    request_hash  text        not null,
    order_number  text,
    total_cents   bigint      not null default 0,
    priority      integer     not null default 1,
    created_at    timestamptz not null,
    expires_at    timestamptz not null,
    primary key (scope, key)
);
create index if not exists idempotency_keys_expires_idx on idempotency_keys (expires_at);
