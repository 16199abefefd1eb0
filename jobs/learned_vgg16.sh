#!/usr/bin/env bash
# Learned codes for every conv block of VGG16 at 224x224 (issue 20; docs/fig8.md).
# 1. One forward pass over COUNT digits images (resized to 3x224x224) stores every
#    block's input and output and the head's input (cocoi train --cache).
# 2. VGG16's last Linear layer is trained on those features (--base --head-only): the
#    seeded conv trunk stays, so the model classifies digits and the cache stays valid.
# 3. One codec per block (ARCH, k = K, r = R), trained from the cache.
# 4. The weights again as safetensors (what jobs/fig8_vgg16_pi.toml and
#    fig9_vgg16_pi.toml load), and the accuracy of the whole model with every block
#    coded and 0..R rows lost in each (cocoi accuracy --together).
# Checkpoints are resumed, so a rerun only does what is missing.
# Settings (environment): OUT, COUNT, EPOCHS, PER_EPOCH, K, R, ARCH, HIDDEN, BLOCKS,
# BATCH, LR, DRAWS.
# The defaults: k = 7, r = 3 (n = 10 workers; 7 divides every block's output width,
# so no column stays on the master), SparseMLP with hidden width 10 (2(k + r) = 20
# doubles the master's decoding time for little gain), batch 8 and lr 0.01 (a
# SparseMLP has its own weights at every position and learns slowly at 1e-3), and
# 6 epochs of 256 of the 384 cached images each: about 35 min for the five blocks on
# two threads (0.09-0.43 s per image and block; docs/fig8.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/_env.sh
OUT=${OUT:-results/learned_vgg16}
COUNT=${COUNT:-384:128}
EPOCHS=${EPOCHS:-6}
PER_EPOCH=${PER_EPOCH:-256}
K=${K:-7}
R=${R:-3}
ARCH=${ARCH:-sparsemlp}
BLOCKS=${BLOCKS:-features.0 features.5 features.10 features.17 features.24}
HIDDEN=${HIDDEN:-10}
BATCH=${BATCH:-4}
LR=${LR:-0.01}
mkdir -p "$OUT"
W="$OUT/vgg16_digits.pt"
if [ ! -f "$W" ]; then
  cocoi train --base --head-only --model vgg16 --data digits --count "$COUNT" \
    --cache "$OUT/cache" --epochs 30 --out "$W"
fi
codecs=()
for block in $BLOCKS; do
  ckpt="$OUT/${ARCH}_${block}_k${K}_r${R}.pt"
  echo "== $ARCH $block k=$K r=$R ($EPOCHS epochs) -> $ckpt"
  cocoi train --model vgg16 --weights "$W" --data digits --count "$COUNT" --cache "$OUT/cache" \
    --block "$block" --k "$K" --r "$R" --arch "$ARCH" --hidden "$HIDDEN" --lr "$LR" \
    --epochs "$EPOCHS" --per-epoch "$PER_EPOCH" --batch-size "$BATCH" --resume --out "$ckpt"
  codecs+=(--codec "$ckpt")
done
[ -f "${W%.pt}.safetensors" ] || cocoi convert "$W" "${W%.pt}.safetensors"
cocoi accuracy --model vgg16 --weights "$W" --data digits --count "${COUNT#*:}" \
  "${codecs[@]}" --together --draws "${DRAWS:-2}" --markdown | tee "$OUT/${ARCH}_k${K}_r${R}_accuracy.md"
