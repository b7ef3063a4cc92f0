-- wake: one NOTIFY per queue, for jobs their own transaction has already committed
-- (wakeups.rs). $1 the channel, $2 the queues. Committed by itself, asynchronously.
SELECT count(pg_notify($1, q.queue)) AS "sent!" FROM unnest($2::text[]) AS q(queue)
