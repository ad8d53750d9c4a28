#!/usr/bin/env bash
# The whole product on the embedded demo data (examples/demo): set up .venv, then
# train (MiniLM) -> export to ONNX -> batch predict -> serve over HTTP, printing what each step gives.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BIN=.venv/bin
OUT=${DEMO_OUT:-demo-out}
mkdir -p "$OUT"
start=$(date +%s)

echo; echo "== 1/4 sft-train: MiniLM on examples/demo/train.csv (300 support messages, 3 labels)"
$BIN/sft-train --train examples/demo/train.csv --eval examples/demo/eval.csv --output "$OUT/model" \
  --epochs 3 --lr 1e-4 --max-length 64 --no-progress
$BIN/python - "$OUT/model/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["eval"]
print(f"eval: accuracy {m['accuracy']:.3f}  macro P/R/F1 {m['precision_macro']:.3f}/{m['recall_macro']:.3f}/{m['f1_macro']:.3f}")
for name, c in m["per_class"].items():
    print(f"  {name:<10} P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  n={c['support']}")
PY

echo; echo "== 2/4 sft-export --onnx (Optimum), validated against PyTorch"
$BIN/sft-export "$OUT/model" --onnx --output "$OUT/bundle"

echo; echo "== 3/4 sft-predict on examples/demo/predict.txt (onnxruntime + tokenizers, no torch)"
$BIN/sft-predict "$OUT/bundle" --input examples/demo/predict.txt --output "$OUT/predictions.jsonl"
paste -d' ' <(cut -c1-70 examples/demo/predict.txt) <($BIN/python -c "
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); print(f\"-> {r['label']} ({r['score']:.2f})\")" "$OUT/predictions.jsonl") | head -6

echo; echo "== 4/4 sft-serve: HTTP daemon with dynamic batching"
PORT=$($BIN/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
$BIN/sft-serve "$OUT/bundle" --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
$BIN/python - "$PORT" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/health", timeout=1); break
    except OSError:
        time.sleep(0.05)
def post(payload):
    req = urllib.request.Request(base + "/predict", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
for text in ["I was billed twice for my premium plan", "my parcel is stuck in customs", "the app crashes on login"]:
    best = post({"inputs": text})[0]
    print(f"POST /predict {text!r:45} -> {best['label']} ({best['score']:.2f})")
print("POST /predict (batch of 2) ->", [r[0]["label"] for r in post({"inputs": ["refund please", "tracking number broken"]})])
PY
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT
echo; echo "demo finished in $(( $(date +%s) - start ))s; outputs in $OUT/"
