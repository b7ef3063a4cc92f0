-- claim_batch: move up to $2 runnable jobs of queue $1 to running under owner $3, with a
-- lease of $4 ms, the most urgent first and FIFO (run_at, id) within a priority.
-- $1 queue, $2 limit, $3 owner (uuid, unique to the process), $4 lease ms, $5 now (NULL = now()),
-- $6 the earliest run_at to read per priority (element p + 1; NULL: from the start).
-- The statement is the function poda_claim_batch
-- (migrations/20261206000026_claim_window.sql), planned once per session.
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", payload AS "payload!",
       attempt AS "attempt!", claim_token AS "claim_token!", max_attempts AS "max_attempts!",
       backoff_base_ms AS "backoff_base_ms!", backoff_max_ms AS "backoff_max_ms!",
       priority AS "priority!", run_at AS "run_at!"
FROM poda_claim_batch($1, $2, $3, $4, $5, $6)
