-- Issue 13: what a cook needs on a ticket. All optional, so existing rows stay
-- valid: the order's note (<= 280 chars), and per item a note (<= 140), its
-- modifiers as a JSON array of strings, and its allergens as a comma-separated
-- list of the 14 names (see src/domain/kitchen_notes.rs). NULL = none.
alter table orders add column if not exists notes text;
alter table order_items add column if not exists notes text;
alter table order_items add column if not exists modifiers text;
alter table order_items add column if not exists allergens text;
-- The speed-of-service report reads the orders received in a time range.
create index if not exists orders_created_at_idx on orders (created_at);
