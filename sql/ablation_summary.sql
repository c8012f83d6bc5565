-- The paper-style ablation table: one row per (variant, language), the
-- pooled `all` included.
--
-- Reads eval_results_by_variant and pairs_by_variant: the union of every
-- variant's current version, tagged with pipeline_variant (`base` for the
-- pipeline without overrides); croco sql and croco report register them.
--
--   accuracy_delta  tuned minus base structured accuracy, mean over the
--                   choice tasks
--   win_rate        open-ended win rate of the tuned policy (ties 1/2)
--   lc_win_rate     its length-controlled version
--   pairs           preference pairs the variant tuned on (all_lang pools
--                   count in the chosen response's language)
--   mean_margin     their mean reward margin, chosen minus rejected
WITH structured AS (
    SELECT
        pipeline_variant,
        language,
        AVG(CASE WHEN variant = 'tuned' THEN value END) - AVG(CASE WHEN variant = 'base' THEN value END)
            AS accuracy_delta
    FROM eval_results_by_variant
    WHERE metric = 'accuracy' AND task <> 'open_ended'
    GROUP BY pipeline_variant, language
),
open_ended AS (
    SELECT
        pipeline_variant,
        language,
        MAX(CASE WHEN metric = 'win_rate' THEN value END) AS win_rate,
        MAX(CASE WHEN metric = 'lc_win_rate' THEN value END) AS lc_win_rate
    FROM eval_results_by_variant
    WHERE task = 'open_ended' AND variant = 'tuned' AND category IS NULL
    GROUP BY pipeline_variant, language
),
pair_stats AS (
    SELECT pipeline_variant, language, COUNT(*) AS pairs, AVG(margin) AS mean_margin
    FROM pairs_by_variant
    GROUP BY pipeline_variant, language
    UNION ALL
    SELECT pipeline_variant, 'all' AS language, COUNT(*) AS pairs, AVG(margin) AS mean_margin
    FROM pairs_by_variant
    GROUP BY pipeline_variant
),
cells AS (
    SELECT pipeline_variant, language FROM structured
    UNION
    SELECT pipeline_variant, language FROM open_ended
)
SELECT
    c.pipeline_variant AS variant,
    c.language,
    s.accuracy_delta,
    o.win_rate,
    o.lc_win_rate,
    p.pairs,
    p.mean_margin
FROM cells AS c
LEFT JOIN structured AS s ON s.pipeline_variant = c.pipeline_variant AND s.language = c.language
LEFT JOIN open_ended AS o ON o.pipeline_variant = c.pipeline_variant AND o.language = c.language
LEFT JOIN pair_stats AS p ON p.pipeline_variant = c.pipeline_variant AND p.language = c.language
ORDER BY variant, c.language
