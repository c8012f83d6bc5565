-- TRL's preference-dataset columns, in the conversational form, from croco's
-- pairs: `prompt` is the user turn, `chosen` and `rejected` the assistant
-- turns (lists of {role, content} messages), one row per pair in pair_id
-- order. `pair_id` and `language` stay for joins and per-language splits
-- (TRL ignores extra columns).
--
--   croco sql FILE -f sql/trl_pairs.sql --format parquet -o pairs.parquet
--   datasets.load_dataset("parquet", data_files="pairs.parquet")["train"]
--
-- feeds trl's DPOTrainer directly, with the tokenizer's own chat template.
SELECT
  pair_id,
  language,
  make_array(named_struct('role', 'user', 'content', prompt_text)) AS prompt,
  make_array(named_struct('role', 'assistant', 'content', chosen_text)) AS chosen,
  make_array(named_struct('role', 'assistant', 'content', rejected_text)) AS rejected
FROM pairs
ORDER BY pair_id
