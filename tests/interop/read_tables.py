"""Reads croco table versions with pyarrow and polars, as any other tool would.

Usage: python3 read_tables.py ROOT TABLE=KEY [TABLE=KEY ...]
Prints JSON: {table: {"pyarrow": {"rows": n, "types": {col: type}}, "polars": {...}}}.
Only the parts a version's manifest lists are read: that is the commit protocol.
"""

import json
import os
import sys

import polars as pl
import pyarrow.parquet as pq


def parts(root, table, key):
    directory = os.path.join(root, "tables", table, key)
    with open(os.path.join(directory, "_manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    return [os.path.join(directory, part["file"]) for part in manifest["parts"]]


def main():
    root = sys.argv[1]
    out = {}
    for spec in sys.argv[2:]:
        table, key = spec.split("=", 1)
        files = parts(root, table, key)
        arrow = pq.ParquetDataset(files).read()
        frame = pl.read_parquet(files)
        out[table] = {
            "pyarrow": {"rows": arrow.num_rows, "types": {f.name: str(f.type) for f in arrow.schema}},
            "polars": {"rows": frame.height, "types": {name: str(dtype) for name, dtype in frame.schema.items()}},
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
