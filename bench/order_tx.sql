-- pgbench script: the order intake transaction of src/storage/postgres/intake.rs (CREATE_ORDERS_SQL),
-- for one order, replayed straight at PostgreSQL. One statement, autocommit (synchronous_commit on):
-- the daily counter upsert, the order, 1-5 items, the status log row and the outbox row, as the
-- daemon writes them (the load generator's orders have no notes, modifiers or allergens: those
-- columns are NULL, as the daemon stores them; nor categories or stations). Every `insert into TABLE (COLUMNS)` line here is
-- the statement's own: a unit test in intake.rs fails when they drift apart. bench/run.sh runs it
-- with -M prepared on a database migrated by the daemon's own code. (pgbench reads every colon as a
-- variable, even inside quotes: the JSON literal spells its colons \x3a.)
\set t random(1, 3)
\set n random(1, 5)
\set tbl random(1, 40)
\set prio random(1, 10)
with c as (
    insert into daily_order_counters (date, last) values (current_date, 1)
    on conflict (date) do update set last = daily_order_counters.last + 1
    returning last
), o as (
    insert into orders (created_at, updated_at, number, customer_name, type, table_number,
                        delivery_address, total_amount, priority, status, version, notes)
    select now(), now(),
           'ORD_' || to_char(current_date, 'YYYYMMDD') || '_' ||
             case when c.last < 1000 then lpad(c.last::text, 3, '0') else c.last::text end,
           'Jane Smith', (array['dine_in', 'takeout', 'delivery'])[:t],
           case when :t = 1 then (:tbl)::int end,
           case when :t = 3 then '12 Baker Street, Apt 3' end,
           4197::bigint / 100.0, case when :prio > 8 then 5 else 1 end, 'received', 1, null::text
    from c
    returning id, number
), i as (
    insert into order_items (created_at, order_id, name, quantity, price, notes, modifiers, allergens, category)
    select now(), o.id, t.name, t.quantity, t.price_cents / 100.0, null::text, null::text, null::text, null::text
    from o, unnest((array['Margherita Pizza', 'Caesar Salad', 'Steak', 'Pad Thai', 'Spring Rolls'])[1:(:n)::int],
                   (array[2, 1, 1, 2, 3])[1:(:n)::int],
                   (array[1599, 899, 2999, 1400, 650]::bigint[])[1:(:n)::int]) as t(name, quantity, price_cents)
), p as (
    -- A kitchen without stations (the benchmark's) writes no parts.
    insert into order_item_stations (order_id, item_index, station)
    select o.id, 0, 'none' from o where false
), l as (
    insert into order_status_log (created_at, order_id, status, changed_by, changed_at)
    select now(), o.id, 'received', 'order-service', now() from o
), x as (
    insert into outbox (created_at, exchange, routing_key, payload, priority, message_id, request_id, owner)
    select now(), 'orders_topic', 'kitchen.takeout.1',
           jsonb_set(E'{"order_number"\x3a"","customer_name"\x3a"Jane Smith","order_type"\x3a"takeout","table_number"\x3anull,"delivery_address"\x3anull,"items"\x3a[{"name"\x3a"Margherita Pizza","quantity"\x3a2,"price"\x3a15.99},{"name"\x3a"Caesar Salad","quantity"\x3a1,"price"\x3a8.99}],"total_amount"\x3a40.97,"priority"\x3a1}'::text::jsonb,
                     '{order_number}', to_jsonb(o.number))::text,
           1, o.number, '0f8fad5b-d9cb-469f-a165-70867728950e', 'pgbench'
    from o
)
select number from o;
