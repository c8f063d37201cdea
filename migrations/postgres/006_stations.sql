-- Issue 24 (docs/stations.md): stations and an expo. All additive, so an
-- existing box keeps its orders: they simply have no parts.
-- An item's category (<= 40 chars), for routing.
alter table order_items add column if not exists category text;
-- The expo's rush mark, and when the last part of the order was bumped.
alter table orders add column if not exists rush boolean not null default false;
alter table orders add column if not exists stations_done_at timestamptz;
-- One row per part: an item (by its 0-based place in the order) at one station.
create table if not exists order_item_stations (
    "order_id"    integer     not null references orders(id),
    "item_index"  integer     not null,
    "station"     text        not null,
    "state"       text        not null default 'waiting' check (state in ('waiting', 'cooking', 'done')),
    "started_at"  timestamptz,
    "started_by"  text,
    "bumped_at"   timestamptz,
    "bumped_by"   text,
    primary key (order_id, item_index, station)
);
-- A station's screen reads its open parts.
create index if not exists order_item_stations_open_idx on order_item_stations (station) where state <> 'done';
-- The history of part and rush changes (status changes stay in order_status_log).
create table if not exists order_item_events (
    "id"            bigserial   primary key,
    "order_id"      integer     not null references orders(id),
    "item_index"    integer,
    "station"       text,
    "state"         text,
    "rush"          boolean,
    "order_status"  text        not null,
    "changed_by"    text        not null,
    "changed_at"    timestamptz not null
);
create index if not exists order_item_events_order_idx on order_item_events (order_id);
