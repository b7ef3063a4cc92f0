-- start_fan_out: count the cycle's eligible members, once, when its fan-out first runs.
-- $1 cycle id.
-- Eligible: the tier's active members that existed when the cycle was created
-- (id <= member_bound), except the deceased. Counted over members_tier_active_idx
-- (index-only when the visibility map allows). A resumed run keeps the first count.
UPDATE contribution_cycles c
SET total = (SELECT count(*)
             FROM members m
             WHERE m.tier_id = c.tier_id
               AND m.status = 'active'
               AND m.id <= c.member_bound
               AND m.id <> c.deceased_member_id),
    started_at = now(),
    updated_at = now()
WHERE c.id = $1
  AND c.status = 'Initializing'
  AND c.total IS NULL
