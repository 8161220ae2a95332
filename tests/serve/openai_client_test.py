#!/usr/bin/env python3
"""`troupe serve` as OpenAI's own Python client sees it (the `clients` suite).

Tiny models trained for one step are served with an API key. Disaggregated (1 prefill and 2
decode instances, and two-hosts.toml's decode process), 16 concurrent streams equal a colocated
server's. With expert shards whose
redundant copies are re-placed every 10 ms, 32 concurrent streams equal a server without shards
and the metrics count the moves. With DeepSeek-V3's tokenizer,
8 chat completions streamed at once equal the same chats answered one by one. With troupe's
byte tokenizer, the `openai` package lists the model, completes 32 prompts one by one
(greedy), then streams the same 32 prompts at once: every stream's text equals its prompt's
completion alone. Then the errors the client raises (unknown model, context too long, a chat
request without a chat format, a wrong key), and a SIGTERM while 8 streams run: each
finishes, new connections are refused, the process exits 0.

Needs the `openai` package (tools/requirements.txt); exits 77 (skipped) without it.
Run: meson test -C build --suite clients
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError:
    print("skipped: the openai package is not installed (pip install -r tools/requirements.txt)")
    sys.exit(77)

TROUPE = os.environ.get("TROUPE_EXE") or os.path.join(os.environ["TROUPE_BUILD_DIR"], "troupe")
SOURCE = os.environ.get("TROUPE_SOURCE_DIR", ".")


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def start_server(checkpoint, key_file, *extra):
    server = subprocess.Popen(
        [TROUPE, "serve", "--model", checkpoint, "--listen", "127.0.0.1:0", "--api-key-file",
         key_file, "--max-batch", "8", "--max-queue", "64", "--prefill-chunk", "16",
         "--cache-dtype", "f32", "--kv-cache-mib", "64", "--threads", "2", "--model-name",
         "tiny", *extra],
        stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    check(" at http://" in line, f"troupe serve did not start: {line!r}")
    url = line.split(" at ")[1].split(" ")[0]
    return server, url


def train(scratch, name, *settings):
    """A checkpoint of the tiny model after one step."""
    trained = subprocess.run(
        [TROUPE, "train", os.path.join(SOURCE, "topologies/tiny.toml"), "--steps", "1",
         "--checkpoint-dir", os.path.join(scratch, name), "--set", "train.micro_batch_size=2",
         "--set", "train.sequence_length=32", "--threads", "2", *settings],
        capture_output=True, text=True)
    check(trained.returncode == 0, f"troupe train failed: {trained.stderr}")
    return os.path.join(scratch, name, "step-000001")


def chat_with_deepseeks_tokenizer(scratch, key_file):
    """Chat completions, streamed and not, through DeepSeek-V3's tokenizer and chat format."""
    with open(os.path.join(SOURCE, "topologies/models/tiny/config.json")) as f:
        config = json.load(f)
    config["vocab_size"] = 129280  # DeepSeek-V3's tokenizer
    config_file = os.path.join(scratch, "tiny-129k.json")
    with open(config_file, "w") as f:
        json.dump(config, f)
    checkpoint = train(scratch, "chat", "--set", f"model.config={config_file}")
    server, url = start_server(checkpoint, key_file, "--tokenizer",
                               os.path.join(SOURCE, "tests/fixtures/tokenizer/deepseek-v3"))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        questions = [f"Question {i}: what is {i} + {i}?" for i in range(8)]
        alone = {}
        for q in questions:
            c = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": q}], max_tokens=12,
                temperature=0)
            check(c.choices[0].message.role == "assistant", f"{c}")
            alone[q] = c.choices[0].message.content

        def stream(q):
            text, role = "", None
            for chunk in client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": q}], max_tokens=12,
                    temperature=0, stream=True):
                if chunk.choices:
                    role = chunk.choices[0].delta.role or role
                    text += chunk.choices[0].delta.content or ""
            return text, role

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            streamed = dict(zip(questions, pool.map(stream, questions)))
        for q in questions:
            check(streamed[q] == (alone[q], "assistant"), f"{q!r}: {streamed[q]} != {alone[q]!r}")
        print("8 concurrent chat streams (DeepSeek-V3's tokenizer) equal their answers alone")
    finally:
        server.terminate()
        server.wait()


def disaggregated(checkpoint, key_file):
    """Prefill and decode apart (1 prefill and 2 decode instances; then two-hosts.toml, decode in
    a process of its own): 16 concurrent streams get the completions a colocated server gives
    (greedy)."""
    prompts = [f"Disaggregated {i}: " + "xyz"[: i % 3] for i in range(16)]
    texts = {}
    for name, extra in [("colocated", ()),
                        ("disaggregated", ("--prefill-instances", "1", "--decode-instances", "2")),
                        ("two processes", (os.path.join(SOURCE, "topologies", "two-hosts.toml"),))]:
        server, url = start_server(checkpoint, key_file, *extra)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)

            def stream(p):
                return "".join(c.choices[0].text for c in client.completions.create(
                    model="tiny", prompt=p, max_tokens=20, temperature=0, stream=True)
                    if c.choices)

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                texts[name] = list(pool.map(stream, prompts))
        finally:
            server.terminate()
            server.wait()
    for name in ("disaggregated", "two processes"):
        check(texts["colocated"] == texts[name],
              f"{name} {texts[name]} != colocated {texts['colocated']}")
    print("16 streams through 1 prefill + 2 decode instances, in one process and with decode in "
          "a second process, equal a colocated server's")


def live_rebalance(checkpoint, key_file):
    """Expert shards with redundant copies re-placed every 10 ms from the load they see, while 32
    streams run: every stream completes with the text of a server without shards (greedy), and
    the metrics show the moves."""
    prompts = [f"Rebalanced {i}: " + "pqrs"[: i % 4] for i in range(32)]
    texts, moved = {}, 0.0
    for name, extra in [("whole", ()),
                        ("sharded", ("--expert-shards", "2", "--redundant-experts", "2",
                                     "--rebalance-interval", "0.01"))]:
        server, url = start_server(checkpoint, key_file, *extra)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0,
                                   timeout=120)

            def stream(p):
                return "".join(c.choices[0].text for c in client.completions.create(
                    model="tiny", prompt=p, max_tokens=24, temperature=0, stream=True)
                    if c.choices)

            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                texts[name] = list(pool.map(stream, prompts))
            if name == "sharded":
                scrape = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
                for line in scrape.splitlines():
                    if (line.startswith("troupe_expert_rebalances_total{")
                            and 'outcome="moved"' in line):
                        moved = float(line.split()[-1])
        finally:
            server.terminate()
            server.wait()
    check(texts["whole"] == texts["sharded"],
          f"with live rebalances {texts['sharded']} != whole layers {texts['whole']}")
    check(moved >= 1, f"no rebalance moved experts while 32 streams ran (moved={moved})")
    print(f"32 streams while the experts were re-placed {moved:.0f} times equal a server "
          "without expert shards")


def main():
    with tempfile.TemporaryDirectory(prefix="troupe-openai-") as scratch:
        checkpoint = train(scratch, "bytes")
        key_file = os.path.join(scratch, "key")
        with open(key_file, "w") as f:
            f.write("sesame\n")
        chat_with_deepseeks_tokenizer(scratch, key_file)
        disaggregated(checkpoint, key_file)
        live_rebalance(checkpoint, key_file)
        server, url = start_server(checkpoint, key_file)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0,
                                   timeout=120)
            models = client.models.list()
            check([m.id for m in models.data] == ["tiny"], f"models: {models}")

            prompts = [f"Prompt number {i}: the " + "abcdefgh"[: i % 8] for i in range(32)]
            alone = {}
            for p in prompts:
                c = client.completions.create(model="tiny", prompt=p, max_tokens=24,
                                              temperature=0)
                check(c.usage.completion_tokens >= 1, f"no tokens: {c}")
                alone[p] = c.choices[0].text

            def stream(p):
                text, finish = "", None
                for chunk in client.completions.create(model="tiny", prompt=p, max_tokens=24,
                                                       temperature=0, stream=True):
                    if chunk.choices:
                        text += chunk.choices[0].text
                        finish = chunk.choices[0].finish_reason or finish
                return text, finish

            started = time.time()
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                streamed = dict(zip(prompts, pool.map(stream, prompts)))
            elapsed = time.time() - started
            for p in prompts:
                text, finish = streamed[p]
                check(text == alone[p], f"{p!r}: streamed {text!r} != alone {alone[p]!r}")
                check(finish in ("stop", "length"), f"{p!r}: finish_reason {finish}")
            print(f"32 concurrent streams equal their completions alone ({elapsed:.2f} s)")

            for call, expected in [
                (lambda: client.completions.create(model="gpt-4", prompt="x"),
                 openai.NotFoundError),
                (lambda: client.completions.create(model="tiny", prompt="x", max_tokens=10**6),
                 openai.BadRequestError),
                (lambda: client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}]),
                 openai.BadRequestError),
                (lambda: openai.OpenAI(base_url=url + "/v1", api_key="wrong",
                                       max_retries=0).models.list(),
                 openai.AuthenticationError),
            ]:
                try:
                    call()
                    raise AssertionError(f"no {expected.__name__}")
                except expected as e:
                    print(f"{expected.__name__}: {e.message[:90]}")

            # SIGTERM once 8 streams have begun: each finishes; then nothing new is taken.
            begun = threading.Barrier(8)

            def long_stream(i):
                text, finish, chunks = "", None, 0
                for chunk in client.completions.create(model="tiny", prompt=f"drain {i}",
                                                       max_tokens=240, temperature=0.8, seed=i,
                                                       stream=True):
                    chunks += 1
                    if chunks == 1 and begun.wait() == 0:
                        server.send_signal(signal.SIGTERM)
                    if chunk.choices:
                        text += chunk.choices[0].text
                        finish = chunk.choices[0].finish_reason or finish
                return finish

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                finishes = list(pool.map(long_stream, range(8)))
            check(all(f in ("stop", "length") for f in finishes), f"drained: {finishes}")
            code = server.wait(timeout=60)
            check(code == 0, f"troupe serve exited {code}")
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                raise AssertionError("the server still answers after its drain")
            except (urllib.error.URLError, ConnectionError):
                pass
            print("SIGTERM: 8 running streams finished, the server exited 0")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
