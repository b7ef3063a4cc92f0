-- record_webhooks: a batch of webhook deliveries and their ticket jobs, in one statement.
-- $1 event_id[] (distinct, sorted), $2 event_name[], $3 payment_id[], $4 payload[] (the raw
-- bodies, JSON text), $5 job_payload[] (JSON text; NULL for an event that enqueues nothing),
-- $6 unique_key[] (the job's; NULL with the payload), $7 the jobs' queue, $8 their kind,
-- $9 max_attempts, $10 priority, $11 backoff_base_ms, $12 backoff_max_ms.
-- One row per event: whether this statement recorded it, and its ticket job.
--
-- Sent on its own it commits by itself: one round trip for the whole batch. It sends no
-- NOTIFY: the writer wakes the ticket workers once it has committed (wake-after-commit.md).
--
-- An event this statement's snapshot has already recorded (a redelivery) enqueues nothing and
-- answers with the job recorded with it. Every other event with a payload has its job
-- enqueued before the event is written, by `poda_enqueue_many`, whose lookup of a key already
-- taken is a statement of its own and sees a job committed while this statement ran. So two
-- batches that race with the first deliveries of one event, or with two events of one
-- payment, get the same job, and the event's row holds it. Keys go to the enqueue sorted and
-- events are inserted sorted, so racing batches take their locks in one order.
-- Relies on webhook_events_pkey and jobs_unique_key_idx; planned once per connection
-- (INDEX_PLANS), so every read of a table is a probe with an index condition.
WITH input AS (
    SELECT t.*, earlier.recorded, earlier.job_id AS recorded_job_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
         AS t(event_id, event_name, payment_id, payload, job_payload, unique_key)
    -- One probe of the primary key per event. The LIMIT keeps it a probe: the statement runs
    -- on a plan made once per connection, and a join planned while the table was empty
    -- would read the whole index (docs/plan-cache.md).
    LEFT JOIN LATERAL (
        SELECT true AS recorded, w.job_id FROM webhook_events w WHERE w.event_id = t.event_id
        LIMIT 1
    ) earlier ON true
),
to_enqueue AS (
    SELECT DISTINCT ON (i.unique_key) i.unique_key, i.job_payload
    FROM input i
    WHERE i.job_payload IS NOT NULL AND i.recorded IS NULL
    ORDER BY i.unique_key, i.event_id
),
enqueued AS (
    SELECT k.unique_key, k.job_id
    FROM (
        SELECT array_agg(unique_key ORDER BY unique_key) AS keys,
               array_agg(job_payload::jsonb ORDER BY unique_key) AS payloads,
               count(*)::int AS n
        FROM to_enqueue
        HAVING count(*) > 0
    ) batch,
    unnest(batch.keys,
           poda_enqueue_many(
               array_fill($7::text, ARRAY[batch.n]), array_fill($8::text, ARRAY[batch.n]),
               batch.payloads, NULL, array_fill($10::smallint, ARRAY[batch.n]), batch.keys,
               array_fill($9::int, ARRAY[batch.n]), array_fill($11::int, ARRAY[batch.n]),
               array_fill($12::int, ARRAY[batch.n]), wake => false)) AS k(unique_key, job_id)
),
recorded AS (
    INSERT INTO webhook_events (event_id, event_name, payment_id, payload, job_id)
    SELECT i.event_id, i.event_name, i.payment_id, i.payload::jsonb, e.job_id
    FROM input i
    LEFT JOIN enqueued e ON e.unique_key = i.unique_key AND i.job_payload IS NOT NULL
    ORDER BY i.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
SELECT i.event_id AS "event_id!",
       r.event_id IS NOT NULL AS "first_delivery!",
       coalesce(e.job_id, i.recorded_job_id) AS job_id
FROM input i
LEFT JOIN recorded r ON r.event_id = i.event_id
LEFT JOIN enqueued e ON e.unique_key = i.unique_key AND i.job_payload IS NOT NULL
