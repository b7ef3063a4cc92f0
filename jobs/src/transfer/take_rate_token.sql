-- take_rate_token: refill a global token bucket from the time elapsed and take one token, in
-- one atomic statement (the row lock serialises every replica).
-- $1 name, $2 refill rate (tokens per second), $3 capacity (burst).
-- Returns whether a token was granted and the tokens left (below 1 when refused).
-- Relies on the primary key of rate_limit_buckets (name).
INSERT INTO rate_limit_buckets AS b (name, tokens, granted, updated_at)
VALUES ($1, $3::double precision - 1, true, clock_timestamp())
ON CONFLICT (name) DO UPDATE
SET tokens = CASE
        WHEN least($3::double precision,
                   b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * $2) >= 1
        THEN least($3::double precision,
                   b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * $2) - 1
        ELSE least($3::double precision,
                   b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * $2)
    END,
    granted = least($3::double precision,
                    b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * $2) >= 1,
    updated_at = clock_timestamp()
RETURNING granted, tokens
