#!/usr/bin/env bash
# Issue 15's before/after on the emulated testbed, interleaved: VGG16, n = 10, k = 8 and 7,
# 4 requests per run (the first warms up), BEFORE=<a checkout of the old master> vs this tree.
#   git worktree add /tmp/before e0cf3fc && BEFORE=/tmp/before ./jobs/lean_master_compare.sh
# Writes /tmp/tb_{before,after}_k{8,7}_r{1,2}.h5; docs/testbed.md has the table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
BEFORE=${BEFORE:?set BEFORE to a checkout of the commit to compare against}
for rep in 1 2; do
  for k in 8 7; do
    for side in before after; do
      tree=$BEFORE; [ $side = after ] && tree=$ROOT
      (cd "$tree" && PYTHONPATH=$tree mpirun -x PYTHONPATH -np 11 --oversubscribe --bind-to none \
        python -m cocoi_mpi.run --cpu-share 0.15 --master-cpu-share 0.4 --link-mbps 100 \
        --model vgg16 --requests 4 --k $k --no-check --quiet --out /tmp/tb_${side}_k${k}_r${rep}.h5)
      echo "$side k=$k rep=$rep done"
      cocoi testbed cleanup >/dev/null 2>&1 || true
    done
  done
done
