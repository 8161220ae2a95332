#!/usr/bin/env bash
# bench_serve_setups.sh CHECKPOINT [TROUPE] [ROUNDS]: bench_serve.py on CHECKPOINT (a Hugging Face
# directory troupe can serve with its byte tokenizer) in six setups, alternating, ROUNDS rounds
# (default 2): colocated; colocated with MTP speculative decoding; 2 expert shards with 4
# redundant copies re-placed every 2 s; 1 prefill + 1 decode instance in one process; the same
# with decode in a second process (topologies/two-hosts.toml's [serve] decode_host); and, where
# torch and transformers are installed, transformers' generate on a static batch of the same shape
# (tools/reference/bench_generate_hf.py, the checkpoint's config, random weights).
# docs/benchmarks.md, "Serving".
set -euo pipefail
checkpoint=$1
troupe=${2:-build/troupe}
rounds=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
run() {
  local name=$1
  shift
  echo "== $name"
  python3 "$here/bench_serve.py" --model "$checkpoint" --troupe "$troupe" --device cpu \
    --concurrency 8 --requests 32 --prompt-tokens 128 --new-tokens 64 "$@" 2>&1 |
    grep -E "output|time to first|time per output|accepted|bench generate"
}
for _ in $(seq "$rounds"); do
  run colocated
  run colocated-mtp --serve-arg=--speculative --serve-arg=mtp
  run shards-2-redundant-4 --serve-arg=--expert-shards --serve-arg=2 \
    --serve-arg=--redundant-experts --serve-arg=4 --serve-arg=--rebalance-interval --serve-arg=2
  run disaggregated-one-process --serve-arg=--prefill-instances --serve-arg=1 \
    --serve-arg=--decode-instances --serve-arg=1
  run disaggregated-two-processes "--serve-arg=$here/../../topologies/two-hosts.toml"
  if python3 -c "import torch, transformers" 2>/dev/null; then
    echo "== transformers-generate"
    python3 "$here/bench_generate_hf.py" --config "$checkpoint/config.json" --device cpu \
      --threads "$(nproc)" --batch 8 --prompt-tokens 128 --new-tokens 64 --repeat 3 | grep batch
  fi
done
