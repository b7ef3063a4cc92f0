-- Commission transfers at Monime: one row per ticket, written before Monime is first called.
-- Money is integer minor units with its currency, never floats.

-- pending: written, Monime has not confirmed a transfer yet (maybe never called, maybe the
--          answer was lost); processing: Monime accepted it and has not finished;
-- completed / failed: final. A failed row waits for an operator (`worker retry-transfer`).
CREATE TYPE commission_transfer_status AS ENUM ('pending', 'processing', 'completed', 'failed');

CREATE TABLE commission_transfers (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id               bigint      NOT NULL UNIQUE REFERENCES tickets (id),
    company_id              text        NOT NULL REFERENCES companies (id),
    source_account_id       text        NOT NULL,
    destination_account_id  text        NOT NULL,
    amount_minor            bigint      NOT NULL CHECK (amount_minor > 0),
    currency                text        NOT NULL CHECK (currency IN ('SLE', 'USD')),
    status                  commission_transfer_status NOT NULL DEFAULT 'pending',
    -- Bumped only when an operator retries a transfer Monime marked failed: a new generation
    -- is a new Idempotency-Key, so Monime makes a new transfer.
    generation              integer     NOT NULL DEFAULT 1 CHECK (generation > 0),
    idempotency_key         text        NOT NULL UNIQUE CHECK (length(idempotency_key) <= 64),
    -- The exact bytes of the create request, resent byte for byte on every retry.
    request_body            text        NOT NULL,
    monime_transfer_id      text,
    -- Monime's last answer for the transfer (pending, processing, completed, failed).
    monime_status           text,
    failure_code            text,
    -- Retryable failures (connection errors, timeouts, 429, 5xx) met so far.
    retry_count             integer     NOT NULL DEFAULT 0,
    -- Status polls so far (the poll delay grows with it).
    polls                   integer     NOT NULL DEFAULT 0,
    last_error              text,
    -- A slot reserved under the global rate limit: the create may be sent from then on.
    call_not_before         timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- When the status last changed: reconcile reports rows stuck in one status.
    status_changed_at       timestamptz NOT NULL DEFAULT now(),
    completed_at            timestamptz
);
-- Stats per company; reconcile's scans of unfinished and recently completed rows.
CREATE INDEX commission_transfers_company_idx ON commission_transfers (company_id, status);
CREATE INDEX commission_transfers_unfinished_idx ON commission_transfers (status_changed_at)
    WHERE status IN ('pending', 'processing');
CREATE INDEX commission_transfers_completed_idx ON commission_transfers (completed_at)
    WHERE status = 'completed';

-- A global rate limit per name, shared by every worker replica (GCRA): calls get slots spaced
-- 1/rate apart, and `next_at` may lag behind now by the burst window, so up to `burst` calls go
-- at once. `reserve_rate_slot` hands out one slot in one atomic upsert (the row lock
-- serialises every replica); a caller whose slot lies ahead waits for it, without asking again.
CREATE TABLE rate_limit_buckets (
    name        text        PRIMARY KEY,
    next_at     timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE VIEW commission_transfer_stats AS
SELECT company_id,
       count(*)                                                      AS total,
       count(*) FILTER (WHERE status = 'completed')                  AS completed,
       count(*) FILTER (WHERE status IN ('pending', 'processing'))   AS pending,
       count(*) FILTER (WHERE status = 'failed')                     AS failed,
       coalesce(sum(amount_minor) FILTER (WHERE status = 'completed'), 0)::bigint
                                                                     AS amount_completed_minor
FROM commission_transfers
GROUP BY company_id;
