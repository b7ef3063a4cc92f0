-- The ticketing domain: transport companies, their routes, payment codes and tickets.
-- Money is integer minor units with its currency (SLE and USD have 2 decimals), never floats.

CREATE TABLE companies (
    id                  text        PRIMARY KEY,
    name                text        NOT NULL,
    -- The company's Monime financial account: commissions move out of it.
    monime_account_id   text        NOT NULL,
    -- Commission in basis points of the ticket amount (250 = 2.5 %).
    commission_bps      integer     NOT NULL CHECK (commission_bps BETWEEN 0 AND 10000),
    currency            text        NOT NULL CHECK (currency IN ('SLE', 'USD')),
    active              boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE routes (
    id          text        PRIMARY KEY,
    company_id  text        NOT NULL REFERENCES companies (id),
    origin      text        NOT NULL,
    destination text        NOT NULL,
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routes_company_idx ON routes (company_id);

CREATE TYPE payment_code_status AS ENUM ('active', 'exhausted', 'expired', 'disabled');

-- A code printed for a trip or a promotion: it may be used `usage_limit` times before it is
-- exhausted, and not after `expires_at`.
CREATE TABLE payment_codes (
    code        text        PRIMARY KEY,
    company_id  text        NOT NULL REFERENCES companies (id),
    route_id    text        REFERENCES routes (id),
    usage_limit integer     NOT NULL CHECK (usage_limit > 0),
    used_count  integer     NOT NULL DEFAULT 0,
    expires_at  timestamptz,
    status      payment_code_status NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_codes_usage_within_limit CHECK (used_count BETWEEN 0 AND usage_limit)
);
CREATE INDEX payment_codes_company_idx ON payment_codes (company_id);

CREATE TYPE ticket_status AS ENUM ('issued', 'cancelled');

-- One ticket per Monime payment (payment_id is unique): however often the payment is
-- delivered, retried or raced, there is one row.
CREATE TABLE tickets (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id        text        NOT NULL UNIQUE,
    event_id          text        NOT NULL,
    company_id        text        NOT NULL REFERENCES companies (id),
    route_id          text        NOT NULL REFERENCES routes (id),
    payment_code      text        REFERENCES payment_codes (code),
    passenger_phone   text        NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor > 0),
    commission_minor  bigint      NOT NULL CHECK (commission_minor >= 0 AND commission_minor <= amount_minor),
    currency          text        NOT NULL CHECK (currency IN ('SLE', 'USD')),
    financial_transaction_reference text,
    status            ticket_status NOT NULL DEFAULT 'issued',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- Dashboards: a company's or a route's tickets over time; a payment code's uses.
CREATE INDEX tickets_company_created_idx ON tickets (company_id, created_at);
CREATE INDEX tickets_route_created_idx ON tickets (route_id, created_at);
CREATE INDEX tickets_payment_code_idx ON tickets (payment_code) WHERE payment_code IS NOT NULL;
