#!/usr/bin/env bash
# Learned codes on scikit-learn's digits with LeNet-5: the accuracy table of docs/learned.md.
# Trains the base model, then one codec per architecture and (k, r), then prints the
# table of test accuracy with 0..r outputs lost. Checkpoints are resumed, so a rerun
# only trains what is missing. Settings: OUT, EPOCHS, BLOCK, ARCHS, KR (environment).
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/_env.sh
OUT=${OUT:-results/learned_digits}
EPOCHS=${EPOCHS:-40}
BLOCK=${BLOCK:-features.3}
ARCHS=${ARCHS:-sparsemlp conv mlp}
KR=${KR:-2:1 4:1 4:2}
mkdir -p "$OUT"
if [ ! -f "$OUT/lenet5.pt" ]; then
  cocoi train --base --model lenet5 --data digits --epochs 20 --quiet --out "$OUT/lenet5.pt"
fi
codecs=()
for arch in $ARCHS; do
  for kr in $KR; do
    k=${kr%:*} r=${kr#*:}
    ckpt="$OUT/${arch}_k${k}_r${r}.pt"
    echo "== $arch k=$k r=$r ($BLOCK, $EPOCHS epochs) -> $ckpt"
    cocoi train --model lenet5 --weights "$OUT/lenet5.pt" --data digits --block "$BLOCK" \
      --k "$k" --r "$r" --arch "$arch" --epochs "$EPOCHS" --resume --quiet --out "$ckpt"
    codecs+=(--codec "$ckpt")
  done
done
cocoi accuracy --model lenet5 --weights "$OUT/lenet5.pt" --data digits "${codecs[@]}" --markdown \
  | tee "$OUT/accuracy.md"
