-- enqueue_many: insert a batch of jobs in one statement.
-- $1 queue[], $2 kind[], $3 payload[] (JSON text), $4 unique_key[] (NULL = none),
-- $5 run_at[] (NULL = now()), $6 max_attempts[], $7 backoff_base_ms[], $8 backoff_max_ms[],
-- $9 priority[] (0..3, checked by the caller and the table; NULL: every job has the default
-- priority $12), $10 concurrency_key[] (NULL: no job has a key), $11 the NOTIFY channel.
-- (unnest pads a NULL array with NULLs.)
-- Ids are drawn first so each input row can be told apart from the one that was skipped
-- for an existing unique key (jobs_unique_key_idx); the caller looks those up afterwards.
-- The identity's sequence is named outright (`jobs_id_seq`, as CREATE TABLE named it):
-- pg_get_serial_sequence() here ran a catalog lookup for every row, a few per cent of a
-- ticket run's database time.
-- One NOTIFY per queue per statement, delivered at COMMIT of the caller's transaction.
WITH input AS (
    SELECT nextval('jobs_id_seq'::regclass) AS id, t.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                $6::int[], $7::int[], $8::int[], $9::smallint[], $10::text[])
         WITH ORDINALITY AS t(queue, kind, payload, unique_key, run_at, max_attempts,
                              backoff_base_ms, backoff_max_ms, priority, concurrency_key, ord)
),
inserted AS (
    INSERT INTO jobs (id, queue, kind, payload, unique_key, run_at, max_attempts,
                      backoff_base_ms, backoff_max_ms, priority, concurrency_key)
    SELECT id, queue, kind, payload::jsonb, unique_key, coalesce(run_at, now()), max_attempts,
           backoff_base_ms, backoff_max_ms, coalesce(priority, $12), concurrency_key
    FROM input
    ORDER BY ord
    ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id, queue
),
registered AS (
    INSERT INTO job_queues (name)
    SELECT DISTINCT queue FROM inserted
    ON CONFLICT (name) DO NOTHING
),
notified AS (
    SELECT count(pg_notify($11, queue)) AS n FROM (SELECT DISTINCT queue FROM inserted) q
)
SELECT input.id AS "id!", inserted.id IS NOT NULL AS "created!", (SELECT n FROM notified) AS notified
FROM input
LEFT JOIN inserted ON inserted.id = input.id
ORDER BY input.ord
