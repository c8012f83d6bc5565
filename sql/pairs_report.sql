-- What the pairs stage could not pair, and why: one row of counts.
--
-- Reads the same tables as pairs.sql. Generations without a score row, or with
-- a null or NaN reward, are excluded from pools; pools of one response and
-- pools whose responses all share the best reward yield no pair.
WITH params AS (
    SELECT pool_scope FROM pairs_params
),
joined AS (
    SELECT
        s.generation_id IS NULL AS unscored,
        s.generation_id IS NOT NULL AND (s.reward IS NULL OR isnan(s.reward)) AS invalid_reward,
        s.reward,
        CASE WHEN params.pool_scope = 'all_lang' THEN g.source_id ELSE g.prompt_id END AS pool_id
    FROM generations AS g
    LEFT JOIN scores AS s ON s.generation_id = g.generation_id
    CROSS JOIN params
),
pools AS (
    SELECT pool_id, COUNT(*) AS pool_size, MAX(reward) AS best, MIN(reward) AS worst
    FROM joined
    WHERE NOT unscored AND NOT invalid_reward
    GROUP BY pool_id
)
SELECT
    (SELECT COUNT(*) FROM joined) AS generations,
    (SELECT COUNT(*) FROM joined WHERE unscored) AS excluded_unscored,
    (SELECT COUNT(*) FROM joined WHERE invalid_reward) AS excluded_null_or_nan_reward,
    (SELECT COUNT(*) FROM pools) AS pools,
    (SELECT COUNT(*) FROM pools WHERE pool_size < 2) AS pools_too_small,
    (SELECT COUNT(*) FROM pools WHERE pool_size >= 2 AND best = worst) AS pools_without_lower
