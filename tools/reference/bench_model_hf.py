#!/usr/bin/env python3
"""Forward + backward of Hugging Face transformers' DeepseekV3ForCausalLM on the CPU, beside
`troupe bench model` on the same cores in the same run: the reference issue 19's bar is measured
against (docs/benchmarks.md).

The model is built from the same config.json (random initialisation, FP32), eager (`--compile`
for torch.compile), with transformers' default MoE path and SDPA attention, on `--threads` threads
(torch.set_num_threads; troupe gets the same --threads). transformers has no multi-token
prediction, so the config's `num_nextn_predict_layers` MTP modules are built here from its own
parts as DeepSeek-V3 defines them and troupe runs them (mtp_reference.py; `--no-mtp` leaves
them out of the reference only, to show what they cost). Each step is forward and backward of that loss on
`--batch` x `--seq` random tokens. The
two run alternately, `--pairs` times, each a fresh process with one warm-up step and `--steps`
timed steps; printed: each run's minimum step time, the medians, and the paired ratio
troupe / transformers of tokens/s (above 1: troupe is faster).

    python3 tools/reference/bench_model_hf.py --config topologies/models/small-512/config.json \
        --troupe build/troupe [--threads 2] [--batch 2] [--seq 512] [--pairs 3] [--compile]
"""

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time


def torch_run(args):
    """One process's run of transformers: prints one JSON line."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from mtp_reference import TrainingLoss, depths_of

    config = AutoConfig.from_pretrained(args.config)
    depths = 0 if args.no_mtp else depths_of(config)
    config.num_nextn_predict_layers = 0
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                             dtype=torch.float32)
    model.train()
    step_fn = TrainingLoss(model, depths)
    if args.compile:
        step_fn = torch.compile(step_fn)
    tokens = torch.randint(0, min(256, config.vocab_size), (args.batch, args.seq))
    times = []
    for step in range(args.steps + 1):
        step_fn.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = step_fn(tokens)
        loss.backward()
        elapsed = time.perf_counter() - start
        if step > 0:
            times.append(elapsed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
                      "peak_mib": peak, "torch": torch.__version__, "mtp_depths": depths,
                      "parameters": sum(p.numel() for p in step_fn.parameters())}))


def troupe_run(args):
    out = subprocess.run(
        [args.troupe, "bench", "model", "--config", args.config, "--steps", str(args.steps),
         "--threads", str(args.threads), "--batch", str(args.batch), "--length", str(args.seq)],
        capture_output=True, text=True, check=True).stdout
    step = re.search(r"forward \+ backward: ([0-9.]+) ms per step .* median ([0-9.]+) ms", out)
    rss = re.search(r"peak resident memory ([0-9]+) MiB", out)
    return {"min_ms": float(step.group(1)), "median_ms": float(step.group(2)),
            "peak_mib": float(rss.group(1)) if rss else 0.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--troupe", default="build/troupe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-mtp", action="store_true",
                        help="leave the MTP modules out of the reference (troupe still runs them)")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        return torch_run(args)

    own = [sys.executable, __file__, "--torch-only", "--config", args.config, "--threads",
           str(args.threads), "--batch", str(args.batch), "--seq", str(args.seq), "--steps",
           str(args.steps)] + (["--compile"] if args.compile else []) + (
               ["--no-mtp"] if args.no_mtp else [])
    rows = []
    for pair in range(args.pairs):
        troupe = troupe_run(args)
        torch_out = subprocess.run(own, capture_output=True, text=True, check=True).stdout
        reference = json.loads(torch_out.strip().splitlines()[-1])
        rows.append((troupe, reference))
        print(f"pair {pair + 1}: troupe {troupe['min_ms']:.1f} ms, transformers "
              f"{reference['min_ms']:.1f} ms ({'compiled' if args.compile else 'eager'}, torch "
              f"{reference['torch']}); ratio {reference['min_ms'] / troupe['min_ms']:.3f}",
              flush=True)
    tokens = args.batch * args.seq
    ratios = [r["min_ms"] / t["min_ms"] for t, r in rows]
    summary = {
        "threads": args.threads, "tokens_per_step": tokens,
        "troupe_ms": statistics.median(t["min_ms"] for t, _ in rows),
        "transformers_ms": statistics.median(r["min_ms"] for _, r in rows),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "troupe_peak_mib": max(t["peak_mib"] for t, _ in rows),
        "transformers_peak_mib": max(r["peak_mib"] for _, r in rows),
        "compiled": args.compile,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
