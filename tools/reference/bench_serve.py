#!/usr/bin/env python3
"""Serving benchmark: `troupe serve` under concurrent streaming clients, beside the same batch
decoded without HTTP (`troupe bench generate`) in the same run (docs/benchmarks.md).

The model is a Hugging Face directory (--model) or, with --config, one built by transformers
from that config.json with random weights (seed 0, no MTP module) and saved to a scratch
directory (needs torch and transformers). troupe serve runs it with troupe's byte tokenizer (the
config's bos/eos ids must be 256 or more: the shipped tiny, small and small-512 are). Then
--requests streaming /v1/completions requests, --concurrency at a time, each a prompt of
--prompt-tokens random ids (or bytes of --prompt-text) and --new-tokens tokens (greedy,
ignore_eos): the time to first
token (p50, p99), the time per output token after the first (each request's mean; p50, p99), the output tokens/s of the whole run and
the requests/s. The same shape through `troupe bench generate --batch CONCURRENCY` gives the
engine's decode tokens/s without HTTP; their ratio is the server's efficiency. With
--request-rate R the requests arrive open-loop at Poisson times of rate R instead (a request-rate
sweep); with `--serve-arg=--speculative --serve-arg=mtp` the MTP acceptance is read from the
server's /metrics. Standard library
only (http.client), so it runs where the openai package is not installed.

    python3 tools/reference/bench_serve.py --config topologies/models/small-512/config.json \
        [--troupe build/troupe] [--device cpu|cuda:0] [--concurrency 8] [--requests 32] \
        [--prompt-tokens 128] [--new-tokens 64] [--request-rate R] [--prompt-text FILE]
        [--serve-arg=ARG ...] [--json]
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def build_model(config_path, directory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_path)
    config.num_nextn_predict_layers = 0
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def percentile(values, q):
    values = sorted(values)
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
    return values[index]


def stream_request(host, port, prompt, new_tokens):
    """One streamed completion: (time to first token, [gaps between later tokens], tokens)."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": new_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    connection = http.client.HTTPConnection(host, port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first, last, gaps, tokens = None, None, [], 0
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "usage" in event and not event.get("choices"):
            tokens = event["usage"]["completion_tokens"]
            continue
        if not event["choices"] or not event["choices"][0].get("text"):
            continue
        now = time.perf_counter()
        if first is None:
            first = now - start
        else:
            gaps.append(now - last)
        last = now
    connection.close()
    return first or 0.0, gaps, tokens


def speculative_counts(host, port):
    """The server's MTP drafts and accepted drafts so far, from its /metrics."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    counts = {}
    for line in text.splitlines():
        for name in ("troupe_speculative_drafted_tokens_total",
                     "troupe_speculative_accepted_tokens_total"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                counts[name] = counts.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return (counts.get("troupe_speculative_drafted_tokens_total", 0.0),
            counts.get("troupe_speculative_accepted_tokens_total", 0.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face DeepSeek-V3 directory")
    source.add_argument("--config", help="a config.json: random weights built by transformers")
    parser.add_argument("--troupe", default="build/troupe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kv-cache-mib", type=int, default=1024)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an argument for troupe serve (repeat it), e.g. --serve-arg=--decode-instances"
                             " --serve-arg=1")
    parser.add_argument("--request-rate", type=float, default=0.0,
                        help="requests per second, Poisson arrivals (default 0: --concurrency at "
                             "a time, each starting when one ends)")
    parser.add_argument("--prompt-text",
                        help="prompts cut from this text file's bytes at random places (the byte "
                             "tokenizer's ids: the text a model trained on that corpus knows) "
                             "instead of random ids")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="troupe-bench-serve-") as scratch:
        model = args.model or build_model(args.config, os.path.join(scratch, "model"))
        threads = ["--threads", str(args.threads)] if args.threads else []
        server = subprocess.Popen(
            [args.troupe, "serve", "--model", model, "--tokenizer", "bytes", "--model-name",
             "bench", "--listen", "127.0.0.1:0", "--device", args.device, "--max-batch",
             str(args.concurrency), "--max-queue", str(args.requests), "--cache-dtype", "f32",
             "--kv-cache-mib", str(args.kv_cache_mib), *threads, *args.serve_arg],
            stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            if " at http://" not in line:
                sys.exit(f"troupe serve did not start: {line!r}")
            host, port = line.split(" at http://")[1].split(" ")[0].split(":")
            rng = random.Random(0)
            if args.prompt_text:
                with open(args.prompt_text, "rb") as text:
                    corpus = text.read()
                starts = [rng.randrange(0, len(corpus) - args.prompt_tokens)
                          for _ in range(args.requests)]
                prompts = [list(corpus[at:at + args.prompt_tokens]) for at in starts]
            else:
                prompts = [[rng.randrange(0, 256) for _ in range(args.prompt_tokens)]
                           for _ in range(args.requests)]
            # Warm-up: one request alone.
            stream_request(host, int(port), prompts[0], 4)
            start = time.perf_counter()
            if args.request_rate > 0:
                # Open loop: request i is sent at its Poisson arrival time, whatever is running.
                arrivals, t = [], 0.0
                for _ in prompts:
                    arrivals.append(t)
                    t += rng.expovariate(args.request_rate)

                def at_arrival(i):
                    time.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
                    return stream_request(host, int(port), prompts[i], args.new_tokens)

                with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
                    results = list(pool.map(at_arrival, range(len(prompts))))
            else:
                with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(pool.map(
                        lambda p: stream_request(host, int(port), p, args.new_tokens), prompts))
            wall = time.perf_counter() - start
            drafted, accepted = speculative_counts(host, int(port))
        finally:
            server.terminate()
            server.wait(timeout=120)

        engine = subprocess.run(
            [args.troupe, "bench", "generate", "--config",
             args.config or os.path.join(args.model, "config.json"),
             "--batch", str(args.concurrency), "--prompt-tokens", str(args.prompt_tokens),
             "--new-tokens", str(args.new_tokens), "--device", args.device,
             "--cache-dtype", "f32", "--json", *threads],
            capture_output=True, text=True)
        engine_decode = None
        if engine.returncode == 0:
            for row in json.loads(engine.stdout.strip().splitlines()[-1])["results"]:
                if row.get("batch") == args.concurrency:
                    engine_decode = row.get("decode_tokens_per_second")

    ttft = [r[0] for r in results]
    # Per request, as vLLM's benchmark counts it: (last token - first token) / (tokens - 1), the
    # tokens from the usage: an event may carry several (MTP's accepted drafts, bytes held back
    # until they complete a UTF-8 character), so the mean gap between events is no measure.
    tpot = [sum(r[1]) / (r[2] - 1) for r in results if r[1] and r[2] > 1]
    tokens = sum(r[2] for r in results)
    summary = {
        "device": args.device, "concurrency": args.concurrency, "requests": args.requests,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "wall_seconds": wall, "output_tokens": tokens,
        "output_tokens_per_second": tokens / wall, "requests_per_second": args.requests / wall,
        "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
        "tpot_p50_ms": 1e3 * percentile(tpot, 50), "tpot_p99_ms": 1e3 * percentile(tpot, 99),
        "engine_decode_tokens_per_second": engine_decode,
        "request_rate": args.request_rate, "prompt_text": args.prompt_text,
        "speculative_drafted": drafted, "speculative_accepted": accepted,
    }
    if args.json:
        print(json.dumps(summary))
        return
    pace = (f"arriving at {args.request_rate:g}/s (Poisson)" if args.request_rate > 0
            else f"{args.concurrency} at a time")
    print(f"troupe serve on {args.device}: {args.requests} requests, {pace}, "
          f"prompts of {args.prompt_tokens}, {args.new_tokens} new tokens each")
    print(f"  output {summary['output_tokens_per_second']:.1f} tokens/s, "
          f"{summary['requests_per_second']:.2f} requests/s")
    print(f"  time to first token p50 {summary['ttft_p50_ms']:.1f} ms, "
          f"p99 {summary['ttft_p99_ms']:.1f} ms")
    print(f"  time per output token p50 {summary['tpot_p50_ms']:.2f} ms, "
          f"p99 {summary['tpot_p99_ms']:.2f} ms")
    if drafted > 0:
        print(f"  MTP drafts accepted: {accepted:.0f} of {drafted:.0f} "
              f"({100.0 * accepted / drafted:.1f}%)")
    if engine_decode:
        print(f"  troupe bench generate, batch {args.concurrency}: decode {engine_decode:.1f} "
              f"tokens/s (no HTTP); the server's output tokens/s is "
              f"{summary['output_tokens_per_second'] / engine_decode:.2f} of it")
    else:
        print(f"  troupe bench generate failed: {engine.stderr.strip()[:300]}")


if __name__ == "__main__":
    main()
