"""Runs a command and prints, as the last line, a JSON object with its wall time and peak resident memory
(the largest of the process and its children, from getrusage): how the benchmarks measure a whole process.

    python tools/bench/timed.py CMD [ARG ...]
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main():
    start = time.perf_counter()
    done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        sys.exit(done.returncode)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main()
