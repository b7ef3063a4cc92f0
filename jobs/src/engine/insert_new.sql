-- insert_new: insert a batch of jobs that no existing job can conflict with, in one
-- statement; returns the new ids in input order.
-- $1 queue[], $2 kind[], $3 payload[] (JSON text), $4 unique_key[] (NULL = none),
-- $5 run_at[] (NULL = now()), $6 max_attempts[], $7 backoff_base_ms[], $8 backoff_max_ms[],
-- $9 priority[] (0..3, checked by the caller and the table; NULL: every job has the default
-- priority $12), $10 concurrency_key[] (NULL: no job has a key), $11 the NOTIFY channel (NULL:
-- no NOTIFY; the caller wakes the queues after its commit, see wakeups.rs).
-- (unnest pads a NULL array with NULLs.)
-- Unlike enqueue_many there is no ON CONFLICT: a key that exists fails the statement with a
-- unique violation (23505). For a batch without unique keys, or keyed by a row the caller has
-- just inserted in the same transaction (a ticket's transfer job), no key can exist, and the
-- speculative insertion behind ON CONFLICT (a probe of the unique index before each row and a
-- confirmation record after it), the ids drawn ahead and the join back to the input are work
-- saved.
-- The rows are inserted in input order and a session's nextval() only grows, so the ids in
-- ascending order are the ids in input order.
-- With a channel, one NOTIFY per queue per statement, delivered at COMMIT of the caller's
-- transaction.
WITH inserted AS (
    INSERT INTO jobs (queue, kind, payload, unique_key, run_at, max_attempts,
                      backoff_base_ms, backoff_max_ms, priority, concurrency_key)
    SELECT queue, kind, payload::jsonb, unique_key, coalesce(run_at, now()), max_attempts,
           backoff_base_ms, backoff_max_ms, coalesce(priority, $12), concurrency_key
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                $6::int[], $7::int[], $8::int[], $9::smallint[], $10::text[])
         AS t(queue, kind, payload, unique_key, run_at, max_attempts,
              backoff_base_ms, backoff_max_ms, priority, concurrency_key)
    RETURNING id, queue
),
queues AS (
    SELECT DISTINCT queue FROM inserted
),
registered AS (
    INSERT INTO job_queues (name)
    SELECT queue FROM queues
    ON CONFLICT (name) DO NOTHING
)
SELECT (SELECT array_agg(id ORDER BY id) FROM inserted) AS "ids!",
       (SELECT count(pg_notify($11, queue)) FROM queues WHERE $11::text IS NOT NULL) AS notified
