-- API tokens (issue 11): the same table as migrations/postgres. Only the SHA-256
-- of a token is stored; timestamps are fixed-width UTC RFC 3339 text.
create table if not exists api_tokens (
    name         text primary key,
    role         text not null check (role in ('pos', 'kitchen', 'manager')),
    token_hash   text not null unique,
    created_at   text not null,
    last_used_at text
);
