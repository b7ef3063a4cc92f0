-- Enqueue from SQL: triggers, psql and other languages enqueue in their own transactions,
-- as the engine's `enqueue_many` does (jobs/src/engine/enqueue_many.sql), with the same rows,
-- the same queue registration and the same wake-up. See docs/enqueue-from-sql.md.
--
-- Defaults are the engine's for a job without a kind-specific policy (RetryPolicy::default):
-- 25 attempts, backoff from 1 s (backoff_base_ms 1000) doubling up to 1 h (backoff_max_ms
-- 3600000). Priority is 0 (most urgent) .. 3, default 1.
--
-- poda_enqueue_many(queues, kinds, payloads, run_ats, priorities, unique_keys, max_attempts)
-- takes one array per column (the optional ones may be NULL, or hold NULLs, for the default)
-- and returns the jobs' ids in input order: for a unique key already taken (before the call,
-- or earlier in the same call) the existing job's id. Relies on jobs_unique_key_idx for the
-- conflict and the lookup of existing keys.

CREATE FUNCTION poda_enqueue_many(
    queues       text[],
    kinds        text[],
    payloads     jsonb[],
    run_ats      timestamptz[] DEFAULT NULL,
    priorities   smallint[]    DEFAULT NULL,
    unique_keys  text[]        DEFAULT NULL,
    max_attempts int[]         DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    n   int := coalesce(cardinality(queues), 0);
    bad record;
    ids bigint[];
BEGIN
    IF coalesce(cardinality(kinds), 0) <> n OR coalesce(cardinality(payloads), 0) <> n
       OR cardinality(run_ats) <> n OR cardinality(priorities) <> n
       OR cardinality(unique_keys) <> n OR cardinality(max_attempts) <> n THEN
        RAISE EXCEPTION 'poda_enqueue_many: every array must have one element per job (% queues)', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN '{}';
    END IF;

    SELECT t.ord, t.queue, t.kind, t.payload, t.priority, t.max_attempts INTO bad
    FROM unnest(queues, kinds, payloads, priorities, max_attempts)
         WITH ORDINALITY AS t(queue, kind, payload, priority, max_attempts, ord)
    WHERE coalesce(t.queue, '') = '' OR coalesce(t.kind, '') = '' OR t.payload IS NULL
       OR t.priority NOT BETWEEN 0 AND 3 OR t.max_attempts < 1
    ORDER BY t.ord
    LIMIT 1;
    IF FOUND THEN
        IF coalesce(bad.queue, '') = '' THEN
            RAISE EXCEPTION 'poda_enqueue: job % has an empty queue', bad.ord
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF coalesce(bad.kind, '') = '' THEN
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has an empty kind', bad.ord, bad.queue
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF bad.payload IS NULL THEN
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has no payload (use ''{}''::jsonb)', bad.ord, bad.queue
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF bad.priority NOT BETWEEN 0 AND 3 THEN
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has priority %, which is not between 0 (most urgent) and 3', bad.ord, bad.queue, bad.priority
                USING ERRCODE = 'invalid_parameter_value';
        ELSE
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has max_attempts %, which is below 1', bad.ord, bad.queue, bad.max_attempts
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- Ids are drawn first so each input row can be told apart from one skipped for a key
    -- that exists; one NOTIFY per queue, delivered when the caller's transaction commits.
    WITH input AS (
        SELECT nextval('jobs_id_seq'::regclass) AS id, t.*
        FROM unnest(queues, kinds, payloads, unique_keys, run_ats, priorities, max_attempts)
             WITH ORDINALITY AS t(queue, kind, payload, unique_key, run_at, priority,
                                  max_attempts, ord)
    ),
    inserted AS (
        INSERT INTO jobs (id, queue, kind, payload, unique_key, run_at, max_attempts, backoff_base_ms, backoff_max_ms, priority)
        SELECT i.id, i.queue, i.kind, i.payload, i.unique_key, coalesce(i.run_at, now()), coalesce(i.max_attempts, 25), 1000, 3600000, coalesce(i.priority, 1)
        FROM input i
        ORDER BY i.ord
        ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING id, queue
    ),
    registered AS (
        INSERT INTO job_queues (name)
        SELECT DISTINCT queue FROM inserted
        ON CONFLICT (name) DO NOTHING
    ),
    notified AS (
        SELECT count(pg_notify('poda_jobs', q.queue)) AS n
        FROM (SELECT DISTINCT queue FROM inserted) q
    )
    SELECT array_agg(inserted.id ORDER BY input.ord) INTO ids
    FROM input
    LEFT JOIN inserted ON inserted.id = input.id
    CROSS JOIN notified;

    -- Rows skipped for a key that exists: a new statement sees the committed winner (under
    -- READ COMMITTED) even when it committed while the insert ran.
    IF array_position(ids, NULL) IS NOT NULL THEN
        SELECT array_agg(coalesce(ids[t.ord], j.id) ORDER BY t.ord) INTO ids
        FROM unnest(queues, unique_keys) WITH ORDINALITY AS t(queue, unique_key, ord)
        LEFT JOIN jobs j
               ON ids[t.ord] IS NULL AND j.queue = t.queue AND j.unique_key = t.unique_key;
        IF array_position(ids, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'poda_enqueue: job % with a unique key was neither inserted nor found', array_position(ids, NULL)
                USING ERRCODE = 'internal_error';
        END IF;
    END IF;
    RETURN ids;
END
$$;

COMMENT ON FUNCTION poda_enqueue_many(text[], text[], jsonb[], timestamptz[], smallint[], text[], int[]) IS
    'Enqueues jobs in the caller''s transaction; returns their ids in input order (the existing job''s id for a unique key already taken).';

-- One job; see poda_enqueue_many.
CREATE FUNCTION poda_enqueue(
    queue        text,
    kind         text,
    payload      jsonb,
    run_at       timestamptz DEFAULT now(),
    priority     smallint    DEFAULT 1,
    unique_key   text        DEFAULT NULL,
    max_attempts int         DEFAULT 25
) RETURNS bigint
LANGUAGE sql
AS $$
    SELECT (poda_enqueue_many(ARRAY[queue], ARRAY[kind], ARRAY[payload], ARRAY[run_at],
                              ARRAY[priority], ARRAY[unique_key], ARRAY[max_attempts]))[1]
$$;

COMMENT ON FUNCTION poda_enqueue(text, text, jsonb, timestamptz, smallint, text, int) IS
    'Enqueues one job in the caller''s transaction; returns its id (the existing job''s id for a unique key already taken).';
