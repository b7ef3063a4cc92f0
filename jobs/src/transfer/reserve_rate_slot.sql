-- reserve_rate_slot: hand out the next call slot of a global rate limit (GCRA).
-- $1 name, $2 seconds between slots (1 / rate), $3 burst window in seconds (burst / rate).
-- Returns how many seconds from now the slot starts (zero or less: call now).
-- Relies on the primary key of rate_limit_buckets (name).
INSERT INTO rate_limit_buckets AS b (name, next_at, updated_at)
VALUES ($1,
        clock_timestamp() - make_interval(secs => $3) + make_interval(secs => $2),
        clock_timestamp())
ON CONFLICT (name) DO UPDATE
SET next_at = greatest(b.next_at, clock_timestamp() - make_interval(secs => $3))
              + make_interval(secs => $2),
    updated_at = clock_timestamp()
RETURNING extract(epoch FROM b.next_at - make_interval(secs => $2) - clock_timestamp())::float8
          AS "wait_s!"
