-- fan_out_chunk: create the contributions of the next chunk of members, and record the
-- cycle's progress and resume cursor, in one statement (one transaction).
-- $1 cycle id, $2 chunk size (members).
-- The cycle row is locked first (FOR UPDATE), so two runs of one cycle (a stalled worker and
-- its rescuer) take turns and each continues from the cursor the other committed.
-- The chunk is a keyset scan of members_tier_active_idx (tier_id, id) WHERE status = 'active':
-- id > cursor_member_id AND id <= member_bound (the snapshot bound), in id order, LIMIT $2.
-- Inserts follow the scan, in primary-key order (cycle_id, member_id). There is no ON CONFLICT
-- (speculative insertion doubled the cost): under the row lock the cursor is exact, so a
-- member past it has no contribution yet. If that ever fails (two runs racing on a stale
-- snapshot), member_contributions_pkey raises 23505, the transaction rolls back and the job
-- retries from the committed cursor.
-- Returns one row: whether the cycle was still Initializing, members scanned, contributions
-- inserted, and the cycle's processed count after the chunk. The cycle's `pending` counter
-- grows with processed (every new contribution is Pending). Scanned = 0 means done.
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
    INSERT INTO member_contributions (cycle_id, member_id, agent_id, amount_minor, currency,
                                      due_date)
    SELECT c.id, b.id, b.agent_id, c.amount_minor, c.currency, c.due_date
    FROM cycle c
    CROSS JOIN batch b
    WHERE b.id <> c.deceased_member_id
    RETURNING agent_id
),
agents AS (
    INSERT INTO contribution_cycle_agents AS a (cycle_id, agent_id, members, amount_minor)
    SELECT c.id, i.agent_id, count(*), count(*) * c.amount_minor
    FROM inserted i
    CROSS JOIN cycle c
    GROUP BY c.id, i.agent_id, c.amount_minor
    ON CONFLICT (cycle_id, agent_id) DO UPDATE
    SET members = a.members + excluded.members,
        amount_minor = a.amount_minor + excluded.amount_minor
),
progressed AS (
    UPDATE contribution_cycles cc
    SET cursor_member_id = (SELECT max(id) FROM batch),
        processed = cc.processed + (SELECT count(*) FROM inserted),
        pending = cc.pending + (SELECT count(*) FROM inserted),
        chunks = cc.chunks + 1,
        updated_at = now()
    FROM cycle c
    WHERE cc.id = c.id
      AND EXISTS (SELECT 1 FROM batch)
    RETURNING cc.processed
)
SELECT EXISTS (SELECT 1 FROM cycle) AS "live!",
       (SELECT count(*) FROM batch) AS "scanned!",
       (SELECT count(*) FROM inserted) AS "inserted!",
       coalesce((SELECT processed FROM progressed), 0) AS "processed!"
