-- prune_events: delete one batch of events relayed before now − $1 ms, oldest first, with
-- what their deliveries left in outbox_deliveries; returns how many events went.
-- $1 retention ms, $2 the batch: events read from the head of the table.
-- Reads the primary key from its start: ids grow with time, so the oldest events come first,
-- and a batch with nothing old enough in it means there is nothing further on either. An
-- event not yet relayed is never deleted. SKIP LOCKED: events a relay holds are left for the
-- next pass.
WITH head AS (
    SELECT id, relayed_at
    FROM outbox_events
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
doomed AS (
    SELECT id FROM head
    WHERE relayed_at < now() - $1::bigint * interval '1 millisecond'
),
settled AS (
    DELETE FROM outbox_deliveries d USING doomed WHERE d.event_id = doomed.id
),
deleted AS (
    DELETE FROM outbox_events e USING doomed WHERE e.id = doomed.id RETURNING e.id
)
SELECT count(*) AS "deleted!" FROM deleted
