-- Preference pairs: the recipe's pair rule as one query.
--
-- Reads: generations, scores, prompts, and pairs_params (one row: pool_scope
-- 'in_lang' | 'all_lang', target_rule 'mean_minus_2std' | 'q1' | 'min',
-- min_margin, chosen_source and rejected_source 'any' | 'on_policy' |
-- 'off_policy', prompt_source 'chosen' | 'rejected' | 'random', prompt_seed).
-- Writes one row per pool that yields a pair; the pairs stage adds pair_id.
--
-- The rule:
--   pool     = the responses of one prompt (in_lang), or of one source prompt
--              across all its languages (all_lang); rows whose reward is null
--              or NaN are not part of any pool.
--   chosen   = the highest reward; ties go to the smallest generation_id.
--   target   = mean - 2 * population std | first quartile (linear
--              interpolation, numpy's default) | minimum, over the pool.
--   rejected = among responses strictly below the chosen reward, the one
--              closest to the target; ties go to the lower reward, then to the
--              smallest generation_id.
--   A pool of one response, or with nothing strictly below its best, yields no
--   pair; pairs whose margin is below min_margin are dropped.
--   Mixed pools (the on/off-policy ablation): the pool and its target are all
--   its responses, but the chosen is the best among chosen_source's and the
--   rejected is picked among rejected_source's ('any': every response).
--   In all_lang pools the prompt (prompt_id, language, prompt_text) is the
--   source prompt in the chosen response's language (prompt_source 'chosen',
--   the recipe's default), in the rejected one's ('rejected'), or in one of
--   the pool's languages drawn per pool ('random': the least md5 (hex) of
--   prompt_seed:pool_id:prompt_id, the same in every engine). An in_lang pool
--   has one prompt, so prompt_source changes nothing there.
--
-- Plain SQL (window functions, CTEs) so the same file runs in DataFusion and
-- DuckDB (see benches/).
WITH params AS (
    SELECT pool_scope, target_rule, min_margin, chosen_source, rejected_source, prompt_source, prompt_seed
    FROM pairs_params
),
scored AS (
    SELECT
        g.generation_id,
        g.prompt_id,
        g.source_id,
        g.language,
        g.text,
        s.reward,
        CASE WHEN params.pool_scope = 'all_lang' THEN g.source_id ELSE g.prompt_id END AS pool_id,
        params.chosen_source IN ('any', g.source) AS chosen_ok,
        params.rejected_source IN ('any', g.source) AS rejected_ok
    FROM generations AS g
    JOIN scores AS s ON s.generation_id = g.generation_id
    CROSS JOIN params
    WHERE s.reward IS NOT NULL AND NOT isnan(s.reward)
),
ranked AS (
    SELECT
        scored.*,
        ROW_NUMBER() OVER (
            PARTITION BY pool_id ORDER BY CASE WHEN chosen_ok THEN 0 ELSE 1 END, reward DESC, generation_id ASC
        ) AS best_rank,
        ROW_NUMBER() OVER (PARTITION BY pool_id ORDER BY reward ASC, generation_id ASC) AS ascending_rank,
        COUNT(*) OVER (PARTITION BY pool_id) AS pool_size
    FROM scored
),
pools AS (
    SELECT
        pool_id,
        MAX(pool_size) AS pool_size,
        AVG(reward) AS pool_mean,
        STDDEV_POP(reward) AS pool_std,
        MIN(reward) AS pool_min,
        -- first quartile at 0-based position h = 0.25 * (n - 1) of the sorted rewards
        MAX(CASE WHEN ascending_rank = FLOOR(0.25 * (pool_size - 1)) + 1 THEN reward END) AS q1_low,
        MAX(CASE WHEN ascending_rank = CEIL(0.25 * (pool_size - 1)) + 1 THEN reward END) AS q1_high,
        MAX(0.25 * (pool_size - 1) - FLOOR(0.25 * (pool_size - 1))) AS q1_fraction
    FROM ranked
    GROUP BY pool_id
),
targets AS (
    SELECT
        pools.*,
        CASE params.target_rule
            WHEN 'mean_minus_2std' THEN pool_mean - 2 * pool_std
            WHEN 'q1' THEN q1_low + q1_fraction * (q1_high - q1_low)
            WHEN 'min' THEN pool_min
        END AS target
    FROM pools
    CROSS JOIN params
),
chosen AS (
    SELECT * FROM ranked WHERE best_rank = 1 AND chosen_ok
),
drawn AS (
    SELECT pool_id, prompt_id
    FROM (
        SELECT
            pool_id,
            prompt_id,
            ROW_NUMBER() OVER (
                PARTITION BY pool_id
                ORDER BY md5(CAST(params.prompt_seed AS VARCHAR) || ':' || pool_id || ':' || prompt_id), prompt_id
            ) AS draw
        FROM (SELECT DISTINCT pool_id, prompt_id FROM scored) AS pool_prompts
        CROSS JOIN params
        WHERE params.prompt_source = 'random'
    ) AS draws
    WHERE draw = 1
),
candidates AS (
    SELECT
        r.*,
        t.target,
        ROW_NUMBER() OVER (
            PARTITION BY r.pool_id
            ORDER BY ABS(r.reward - t.target) ASC, r.reward ASC, r.generation_id ASC
        ) AS closeness_rank
    FROM ranked AS r
    JOIN targets AS t ON t.pool_id = r.pool_id
    JOIN chosen AS c ON c.pool_id = r.pool_id
    WHERE r.reward < c.reward AND r.rejected_ok
)
SELECT
    c.pool_id,
    p.prompt_id,
    c.source_id,
    p.language,
    p.text AS prompt_text,
    c.generation_id AS chosen_generation_id,
    c.text AS chosen_text,
    c.reward AS chosen_reward,
    r.generation_id AS rejected_generation_id,
    r.text AS rejected_text,
    r.reward AS rejected_reward,
    r.language AS rejected_language,
    c.reward - r.reward AS margin,
    t.target,
    CAST(t.pool_size AS BIGINT) AS pool_size,
    t.pool_mean,
    t.pool_std
FROM chosen AS c
JOIN candidates AS r ON r.pool_id = c.pool_id AND r.closeness_rank = 1
JOIN targets AS t ON t.pool_id = c.pool_id
LEFT JOIN drawn AS d ON d.pool_id = c.pool_id
CROSS JOIN params
JOIN prompts AS p ON p.prompt_id = CASE params.prompt_source
    WHEN 'rejected' THEN r.prompt_id
    WHEN 'random' THEN d.prompt_id
    ELSE c.prompt_id
END
WHERE c.reward - r.reward >= params.min_margin
ORDER BY c.pool_id
