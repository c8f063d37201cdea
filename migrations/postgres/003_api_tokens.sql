-- API tokens (issue 11): one row per paired device or account. Only the SHA-256
-- of a token is stored; the token itself is shown once by `token create`.
-- Revoking deletes the row, and the services stop accepting the token within a
-- second (they re-read this table at most once a second).
create table if not exists api_tokens (
    name         text        primary key,
    role         text        not null check (role in ('pos', 'kitchen', 'manager')),
    token_hash   text        not null unique,
    created_at   timestamptz not null,
    last_used_at timestamptz
);
