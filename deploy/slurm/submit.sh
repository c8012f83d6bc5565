#!/bin/bash
# Submits the shard array, then the plain run that merges the shards and runs
# the remaining stages, once every array task has succeeded.
#   PIPELINE=pipelines/eurollm-9b.toml deploy/slurm/submit.sh
set -euo pipefail
here=$(dirname "$0")
array=$(sbatch --parsable --export=ALL "$here/croco-shards.sbatch")
sbatch --dependency=afterok:"$array" --job-name=croco-merge --export=ALL \
  --wrap "croco run \"$PIPELINE\" --log-format json --json"
