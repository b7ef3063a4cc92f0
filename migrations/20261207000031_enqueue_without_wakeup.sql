-- poda_enqueue_many takes `wake` (default true): false enqueues without a NOTIFY, for a caller
-- that wakes the workers itself once its transaction has committed. A NOTIFY takes a
-- server-wide lock at commit and holds it until the transaction ends, WAL flush included, so
-- notifying transactions commit one at a time, and a durable commit that notifies makes every
-- other notifier wait for its flush. See docs/wake-after-commit.md.
-- Every earlier call means what it meant. The signature changes, so the old one is dropped
-- first (`poda_enqueue` calls it by name).

DROP FUNCTION poda_enqueue_many(text[], text[], jsonb[], timestamptz[], smallint[], text[], int[], int[], int[]);

CREATE FUNCTION poda_enqueue_many(
    queues       text[],
    kinds        text[],
    payloads     jsonb[],
    run_ats      timestamptz[] DEFAULT NULL,
    priorities   smallint[]    DEFAULT NULL,
    unique_keys  text[]        DEFAULT NULL,
    max_attempts int[]         DEFAULT NULL,
    backoff_base_ms int[]      DEFAULT NULL,
    backoff_max_ms  int[]      DEFAULT NULL,
    wake         boolean       DEFAULT true
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
       OR cardinality(unique_keys) <> n OR cardinality(max_attempts) <> n
       OR cardinality(backoff_base_ms) <> n OR cardinality(backoff_max_ms) <> n THEN
        RAISE EXCEPTION 'poda_enqueue_many: every array must have one element per job (% queues)', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN '{}';
    END IF;

    SELECT t.ord, t.queue, t.kind, t.payload, t.priority, t.max_attempts,
           coalesce(t.base, 1000) AS base, coalesce(t.cap, 3600000) AS cap INTO bad
    FROM unnest(queues, kinds, payloads, priorities, max_attempts, backoff_base_ms,
                backoff_max_ms)
         WITH ORDINALITY AS t(queue, kind, payload, priority, max_attempts, base, cap, ord)
    WHERE coalesce(t.queue, '') = '' OR coalesce(t.kind, '') = '' OR t.payload IS NULL
       OR t.priority NOT BETWEEN 0 AND 3 OR t.max_attempts < 1
       OR coalesce(t.base, 1000) < 0 OR coalesce(t.cap, 3600000) < coalesce(t.base, 1000)
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
        ELSIF bad.max_attempts < 1 THEN
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has max_attempts %, which is below 1', bad.ord, bad.queue, bad.max_attempts
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF bad.base < 0 THEN
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has backoff_base_ms %, which is below 0', bad.ord, bad.queue, bad.base
                USING ERRCODE = 'invalid_parameter_value';
        ELSE
            RAISE EXCEPTION 'poda_enqueue: job % (queue %) has backoff_max_ms % below its backoff_base_ms %', bad.ord, bad.queue, bad.cap, bad.base
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- Ids are drawn first so each input row can be told apart from one skipped for a key
    -- that exists; unless `wake` is false, one NOTIFY per queue, delivered when the
    -- caller's transaction commits.
    WITH input AS (
        SELECT nextval('jobs_id_seq'::regclass) AS id, t.*
        FROM unnest(queues, kinds, payloads, unique_keys, run_ats, priorities, max_attempts,
                    backoff_base_ms, backoff_max_ms)
             WITH ORDINALITY AS t(queue, kind, payload, unique_key, run_at, priority,
                                  max_attempts, backoff_base_ms, backoff_max_ms, ord)
    ),
    inserted AS (
        INSERT INTO jobs (id, queue, kind, payload, unique_key, run_at, max_attempts, backoff_base_ms, backoff_max_ms, priority)
        SELECT i.id, i.queue, i.kind, i.payload, i.unique_key, coalesce(i.run_at, now()),
               coalesce(i.max_attempts, 25), coalesce(i.backoff_base_ms, 1000),
               coalesce(i.backoff_max_ms, 3600000), coalesce(i.priority, 1)
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
        WHERE wake
    )
    SELECT array_agg(inserted.id ORDER BY input.ord) INTO ids
    FROM input
    LEFT JOIN inserted ON inserted.id = input.id
    CROSS JOIN notified;

    -- Rows skipped for a key that exists: a new statement sees the committed winner (under
    -- READ COMMITTED) even when it committed while the insert ran. One probe of
    -- jobs_unique_key_idx per such row; the LIMIT keeps it a probe under a plan cached while
    -- `jobs` was empty (a caller on generic plans, as the enqueuer's group commit).
    IF array_position(ids, NULL) IS NOT NULL THEN
        SELECT array_agg(coalesce(ids[t.ord], j.id) ORDER BY t.ord) INTO ids
        FROM unnest(queues, unique_keys) WITH ORDINALITY AS t(queue, unique_key, ord)
        LEFT JOIN LATERAL (
            SELECT jobs.id FROM jobs
            WHERE ids[t.ord] IS NULL AND jobs.queue = t.queue AND jobs.unique_key = t.unique_key
            LIMIT 1
        ) j ON true;
        IF array_position(ids, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'poda_enqueue: job % with a unique key was neither inserted nor found', array_position(ids, NULL)
                USING ERRCODE = 'internal_error';
        END IF;
    END IF;
    RETURN ids;
END
$$;

COMMENT ON FUNCTION poda_enqueue_many(text[], text[], jsonb[], timestamptz[], smallint[], text[], int[], int[], int[], boolean) IS
    'Enqueues jobs in the caller''s transaction; returns their ids in input order (the existing job''s id for a unique key already taken). wake => false sends no NOTIFY: the caller wakes the workers after its commit.';
