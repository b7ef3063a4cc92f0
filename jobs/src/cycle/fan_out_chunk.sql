-- fan_out_chunk: create the contributions of the next chunk of members, and record the
-- cycle's progress and resume cursor, in one statement (one transaction).
-- $1 cycle id, $2 chunk size (members).
-- The cycle row is locked first (FOR UPDATE), so two runs of one cycle (a stalled worker and
-- its rescuer) take turns and each continues from the cursor the other committed.
-- The chunk is a keyset scan of members_tier_active_idx (tier_id, id) WHERE status = 'active':
-- id > cursor_member_id AND id <= member_bound (the snapshot bound), in id order, LIMIT $2.
-- Inserts go in primary-key order (cycle_id, member_id); a member that already has its
-- contribution (a redone chunk) is skipped, and only new rows count as processed.
-- Returns one row: whether the cycle was still Initializing, members scanned, contributions
-- inserted, and the cycle's processed count after the chunk. Scanned = 0 means done.
WITH cycle AS (
    SELECT id, tier_id, deceased_member_id, member_bound, cursor_member_id, amount_minor,
           currency, (deadline AT TIME ZONE 'UTC')::date AS due_date
    FROM contribution_cycles
    WHERE id = $1 AND status = 'Initializing'
    FOR UPDATE
),
batch AS (
    SELECT m.id, m.agent_id
    FROM cycle c
    CROSS JOIN LATERAL (
        SELECT m.id, m.agent_id
        FROM members m
        WHERE m.tier_id = c.tier_id
          AND m.status = 'active'
          AND m.id > c.cursor_member_id
          AND m.id <= c.member_bound
        ORDER BY m.id
        LIMIT $2
    ) m
),
inserted AS (
    INSERT INTO member_contributions (cycle_id, member_id, amount_minor, currency, due_date)
    SELECT c.id, b.id, c.amount_minor, c.currency, c.due_date
    FROM batch b
    CROSS JOIN cycle c
    WHERE b.id <> c.deceased_member_id
    ORDER BY b.id
    ON CONFLICT (cycle_id, member_id) DO NOTHING
    RETURNING member_id
),
agents AS (
    INSERT INTO contribution_cycle_agents AS a (cycle_id, agent_id, members, amount_minor)
    SELECT c.id, b.agent_id, count(*), count(*) * c.amount_minor
    FROM inserted i
    JOIN batch b ON b.id = i.member_id
    CROSS JOIN cycle c
    GROUP BY c.id, b.agent_id, c.amount_minor
    ON CONFLICT (cycle_id, agent_id) DO UPDATE
    SET members = a.members + excluded.members,
        amount_minor = a.amount_minor + excluded.amount_minor
),
progressed AS (
    UPDATE contribution_cycles cc
    SET cursor_member_id = (SELECT max(id) FROM batch),
        processed = cc.processed + (SELECT count(*) FROM inserted),
        chunks = cc.chunks + 1,
        updated_at = now()
    FROM cycle c
    WHERE cc.id = c.id
      AND EXISTS (SELECT 1 FROM batch)
    RETURNING cc.processed
)
SELECT EXISTS (SELECT 1 FROM cycle) AS live,
       (SELECT count(*) FROM batch) AS scanned,
       (SELECT count(*) FROM inserted) AS inserted,
       coalesce((SELECT processed FROM progressed), 0) AS processed
