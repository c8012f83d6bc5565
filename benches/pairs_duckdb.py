"""croco's own `sql/pairs.sql`, unchanged, in DuckDB over the benchmark's
Parquet files. Prints JSON {"seconds": t, "pairs": n} (best of `repeats`).

Usage: python3 pairs_duckdb.py DIR SQL_FILE [REPEATS]
"""

import json
import sys
import time

import duckdb


def main():
    directory, sql_file = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    sql = open(sql_file, encoding="utf-8").read()
    con = duckdb.connect()
    for table in ("generations", "scores", "prompts"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{directory}/{table}.parquet')")
    con.execute("CREATE TABLE pairs_params AS SELECT 'in_lang' AS pool_scope, 'mean_minus_2std' AS target_rule, 0.0::DOUBLE AS min_margin, 'any' AS chosen_source, 'any' AS rejected_source, 'chosen' AS prompt_source, 0::UBIGINT AS prompt_seed")
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = len(con.execute(sql).to_arrow_table())
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"seconds": best, "pairs": count}))


if __name__ == "__main__":
    main()
