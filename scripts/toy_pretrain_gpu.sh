#!/usr/bin/env bash
# Device run of the toy recipe (gapray toy pretrain) on one GPU: several variants side by side,
# each a full recipe with its eval; logs and each variant's checkpoint + eval come back in $OUT.
#   bash scripts/toy_pretrain_gpu.sh "A:--gen-steps 500" "B:--gen-steps 1500" ...
# Needs transformers >= 5.19 (JanusImageProcessorPil): carried as wheels in .whl/toy.
set -u
OUT=${OUT:-/tmp/out}
pip install -q --no-deps --target /tmp/tp .whl/toy/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/tp:.
BUDGET=${BUDGET:-370}
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
for spec in "$@"; do
  name=${spec%%:*}; opts=${spec#*:}
  timeout "$BUDGET" python3 -m gapray.toy.pretrain --out "/tmp/runs/$name" --device cuda --threads 3 \
    --save-every 1 --log-every 100 --eval $opts > "/tmp/runs_$name.log" 2>&1 &
done
wait
for spec in "$@"; do
  name=${spec%%:*}
  echo "=== $name: $spec"; tr "\r" "\n" < "/tmp/runs_$name.log" | grep -v -E "^\s*$|Loading|Writing|\[eval\] (understanding|generated)" | tail -60
  (cd /tmp/runs/$name && tar cf "$OUT/$name.tar" checkpoint eval/results.json eval/grid.png 2>/dev/null || tar cf "$OUT/$name-state.tar" state.pt)
done > "$OUT/logs.txt"
cat "$OUT/logs.txt" | grep -E "===|\[vq\] done|test understanding|eval |wrote|Error|error" | tail -60
