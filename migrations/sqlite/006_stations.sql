-- Issue 24: the same tables as migrations/postgres (see there). Timestamps are
-- fixed-width UTC RFC 3339 text; booleans are 0/1.
alter table order_items add column category text;
alter table orders add column rush integer not null default 0;
alter table orders add column stations_done_at text;
create table if not exists order_item_stations (
    order_id    integer not null references orders(id),
    item_index  integer not null,
    station     text    not null,
    state       text    not null default 'waiting' check (state in ('waiting', 'cooking', 'done')),
    started_at  text,
    started_by  text,
    bumped_at   text,
    bumped_by   text,
    primary key (order_id, item_index, station)
);
create index if not exists order_item_stations_open_idx on order_item_stations (station) where state <> 'done';
create table if not exists order_item_events (
    id            integer primary key autoincrement,
    order_id      integer not null references orders(id),
    item_index    integer,
    station       text,
    state         text,
    rush          integer,
    order_status  text    not null,
    changed_by    text    not null,
    changed_at    text    not null
);
create index if not exists order_item_events_order_idx on order_item_events (order_id);
