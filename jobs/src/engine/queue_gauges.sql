-- queue_gauges: runnable depth and age of the oldest runnable job, per known queue.
-- No parameters. Relies on jobs_claim_idx (queue, run_at, id) WHERE state = 'available':
-- one index range per queue, so finished rows cost nothing.
SELECT q.name AS queue,
       g.depth AS "depth!",
       coalesce(extract(epoch FROM now() - g.oldest), 0)::float8 AS "oldest_age_s!"
FROM job_queues q
CROSS JOIN LATERAL (
    SELECT count(*) AS depth, min(run_at) AS oldest
    FROM jobs
    WHERE state = 'available' AND queue = q.name AND run_at <= now()
) g
ORDER BY q.name
