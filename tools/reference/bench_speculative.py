#!/usr/bin/env python3
"""MTP speculative decoding against plain decoding, with `troupe generate`.

Runs `troupe generate --json` on one model and prompt, alternating plain and `--speculative mtp`
runs (greedy and sampled), and prints per mode the median generated tokens/s, the speed-up of the
medians, and the acceptance rate of the drafts (kept drafts / verified drafts over all runs).

  python3 tools/reference/bench_speculative.py --model DIR [--device cuda:0] [--runs 5]
      [--max-new-tokens 256] [--prompt TEXT] [--troupe PATH]
"""
import argparse
import json
import statistics
import subprocess


def run(troupe, args, extra):
    command = [troupe, "generate", "--model", args.model, "--prompt", args.prompt,
               "--max-new-tokens", str(args.max_new_tokens), "--device", args.device, "--json"]
    out = subprocess.run(command + extra, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompt", default=":hacker: n.")
    parser.add_argument("--troupe", default="troupe")
    args = parser.parse_args()
    for label, sampling in (("greedy", []), ("temperature 1", ["--temperature", "1"])):
        rates = {"plain": [], "mtp": []}
        drafted = accepted = 0
        for i in range(args.runs):
            seed = ["--seed", str(i)] if sampling else []
            for mode, extra in (("plain", []), ("mtp", ["--speculative", "mtp"])):
                r = run(args.troupe, args, sampling + seed + extra)
                rates[mode].append(r["generated_tokens_per_second"])
                if mode == "mtp":
                    drafted += r["drafted_tokens"]
                    accepted += r["accepted_tokens"]
        plain, mtp = statistics.median(rates["plain"]), statistics.median(rates["mtp"])
        print(f"{label}: plain {plain:.1f} tokens/s, mtp {mtp:.1f} tokens/s (medians of "
              f"{args.runs}; min-max {min(rates['mtp']):.1f}-{max(rates['mtp']):.1f}), speed-up "
              f"{mtp / plain:.2f}x, drafts accepted {accepted}/{drafted} "
              f"({100.0 * accepted / max(drafted, 1):.1f}%)", flush=True)


if __name__ == "__main__":
    main()
