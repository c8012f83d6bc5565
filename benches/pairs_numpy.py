"""The pair rule (in_lang pools, mean - 2*std target) in plain numpy, as a
speed reference for croco's `sql/pairs.sql`. Reads the benchmark's Parquet
files, prints JSON {"seconds": t, "pairs": n} (best of `repeats`).

Usage: python3 pairs_numpy.py DIR [REPEATS]
"""

import json
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def pairs(directory):
    generations = pq.read_table(f"{directory}/generations.parquet", columns=["generation_id", "prompt_id"])
    scores = pq.read_table(f"{directory}/scores.parquet", columns=["generation_id", "reward"])
    joined = generations.join(scores, "generation_id")
    reward = joined["reward"].to_numpy(zero_copy_only=False)
    keep = ~np.isnan(reward)
    pool = pc.dictionary_encode(joined["prompt_id"]).combine_chunks().indices.to_numpy()[keep]
    ids = joined["generation_id"].to_numpy(zero_copy_only=False)[keep]
    reward = reward[keep]
    id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")

    # chosen: per pool the highest reward, ties to the smallest id
    order = np.lexsort((id_rank, -reward, pool))
    pool, reward, id_rank = pool[order], reward[order], id_rank[order]
    starts = np.flatnonzero(np.r_[True, pool[1:] != pool[:-1]])
    sizes = np.diff(np.r_[starts, len(pool)])
    sums = np.add.reduceat(reward, starts)
    mean = sums / sizes
    std = np.sqrt(np.add.reduceat((reward - np.repeat(mean, sizes)) ** 2, starts) / sizes)
    target = np.repeat(mean - 2 * std, sizes)
    best = np.repeat(reward[starts], sizes)

    # rejected: strictly below the best, closest to the target, then lower reward, then smaller id
    candidate = reward < best
    distance = np.abs(reward - target)
    pick = np.lexsort((id_rank, reward, distance, ~candidate, pool))
    first = np.r_[True, pool[pick][1:] != pool[pick][:-1]]
    chosen_rows = pick[first & candidate[pick]]
    return len(chosen_rows)


def main():
    directory = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = pairs(directory)
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"seconds": best, "pairs": count}))


if __name__ == "__main__":
    main()
