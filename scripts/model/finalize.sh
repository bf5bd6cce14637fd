#!/usr/bin/env bash
# Export the latest whale-tiny checkpoint to models/whale-tiny, evaluate it (with the no-balancing
# ablation and the balanced run's snapshot at the ablation's step, when present), redraw the charts
# and rewrite the model card. Run from the repository root.
set -euo pipefail
PY=${PY:-/work/refenv/bin/python}
RUN=${RUN:-/work/train-run}
ABL=${ABL:-/work/train-run-ablation}
extra=()
if [ -f "$ABL/progress.json" ]; then
  astep=$($PY -c "import json;print(json.load(open('$ABL/progress.json'))['step'])")
  $PY scripts/model/export.py --run "$ABL" --out "$ABL/export" --step "$astep"
  extra+=(--ablation "$ABL/export")
  if [ -f "$RUN/model_step$astep.pt" ]; then
    $PY scripts/model/export.py --run "$RUN" --state "$RUN/model_step$astep.pt" --step "$astep" --out "$RUN/export-step$astep"
    extra+=(--matched "$RUN/export-step$astep")
  fi
fi
$PY scripts/model/export.py --run "$RUN" --out models/whale-tiny
$PY scripts/model/eval.py --model models/whale-tiny --out models/whale-tiny/eval.json "${extra[@]}" > "$RUN/eval.log" 2>&1
$PY scripts/model/report.py --run "$RUN" --ablation-run "$ABL" --model models/whale-tiny
