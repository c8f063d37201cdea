-- Each process's relay publishes the outbox rows its own process wrote, in
-- commit order, so the messages about one order leave in the order they
-- happened. Rows of a process that died are taken over once they are a few
-- seconds old (see messaging::relay).
alter table outbox add column owner text not null default '';
