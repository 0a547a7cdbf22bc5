"""Load on a running `cli.py serve`: aggregate decode throughput, time to first token and
inter-token latency (p50, p99) at several numbers of concurrent clients, per strategy.

    python cli.py serve --artifacts build/smollm2-onnx --engine cpu-fp32 --max-batch 4 --max-queue 64 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --concurrency 1,4,16 \\
        --strategies standard,verify --max-tokens 64 [--task-set real --per-kind 1] [--requests N]
        [--json serve_load.json]

The clients send the chats of a task set (by default one real-task prompt of each kind) or,
with `--task-set none`, the built-in chat prompts of `cli.py bench`. Each client sends
--requests streamed greedy chat requests one after another, by default one of each chat
starting at a different one per client, so that every round has the same mix of prompts
whatever the number of clients (stream_options.include_usage). Every server-sent event is
timed: time to first token is from sending the request to the first content chunk;
inter-token latency the gaps between content chunks (verify's accepted drafts arrive
together, so its gaps mix near-zero and full steps). Aggregate throughput is all completion
tokens over the wall time of the round. Standard library only (http.client), so it measures
the server and not a client library.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.bench import DEFAULT_PROMPTS  # noqa: E402
from runtime.tasks import load_tasks, select  # noqa: E402


def conversations(task_set: str | None, per_kind: int) -> list[list[dict]]:
    """The chats the clients send: a task set's, the first per_kind of each kind, or the
    built-in prompts (task_set None)."""
    if task_set is None:
        return [[{"role": "user", "content": prompt}] for prompt in DEFAULT_PROMPTS]
    return [task.chat() for task in select(load_tasks(task_set), per_kind=per_kind)]


def one_request(url, model: str, messages: list[dict], strategy: str, max_tokens: int) -> dict:
    """Send one streamed chat request; the arrival time of each content chunk and the usage."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=600)
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "strategy": strategy}
    sent = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    answer = connection.getresponse()
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status}: {answer.read().decode()[:300]}")
    arrivals, usage = [], None
    for line in answer:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        if event.get("choices") and event["choices"][0]["delta"].get("content"):
            arrivals.append(time.perf_counter())
    connection.close()
    return {"sent": sent, "arrivals": arrivals, "tokens": usage["completion_tokens"] if usage else len(arrivals)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_round(url, model, chats: list[list[dict]], strategy: str, clients: int, requests: int,
              max_tokens: int) -> dict:
    def client(n: int) -> list[dict]:
        return [one_request(url, model, chats[(n + k) % len(chats)], strategy, max_tokens) for k in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    ttft = [r["arrivals"][0] - r["sent"] for r in results if r["arrivals"]]
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    tokens = sum(r["tokens"] for r in results)
    return {"strategy": strategy, "clients": clients, "requests": len(results), "tokens": tokens,
            "seconds": wall, "tokens_per_s": tokens / wall, "ttft_p50_ms": 1e3 * percentile(ttft, 0.5),
            "ttft_p99_ms": 1e3 * percentile(ttft, 0.99), "itl_p50_ms": 1e3 * percentile(gaps, 0.5),
            "itl_p99_ms": 1e3 * percentile(gaps, 0.99), "itl_mean_ms": 1e3 * statistics.fmean(gaps) if gaps else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="Model id (default: the server's only model).")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--strategies", default="standard,verify")
    parser.add_argument("--requests", type=int, default=None,
                        help="Requests per client per round (default: one per chat, so that every round sends "
                             "the same mix whatever the number of clients).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="Requests sent before timing anything.")
    parser.add_argument("--task-set", default="real", help="the clients' chats: a task set, or 'none' for the "
                                                         "built-in prompts")
    parser.add_argument("--per-kind", type=int, default=1, help="with --task-set: the first N chats of each kind")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()
    chats = conversations(None if args.task_set == "none" else args.task_set, args.per_kind)
    requests = args.requests or len(chats)

    model = args.model
    if model is None:
        parts = urlsplit(args.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
        connection.request("GET", "/v1/models")
        model = json.loads(connection.getresponse().read())["data"][0]["id"]
    strategies = [s for s in args.strategies.split(",") if s]
    for k in range(args.warmup):
        one_request(args.url, model, chats[k % len(chats)], strategies[0], args.max_tokens)
    rows = []
    print(f"{'strategy':<10} {'clients':>7} {'requests':>8} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8}   (ms)")
    for strategy in strategies:
        for clients in (int(c) for c in args.concurrency.split(",")):
            row = run_round(args.url, model, chats, strategy, clients, requests, args.max_tokens)
            rows.append(row)
            print(f"{strategy:<10} {clients:>7} {row['requests']:>8} {row['tokens_per_s']:>7.1f} "
                  f"{row['ttft_p50_ms']:>9.0f} {row['ttft_p99_ms']:>9.0f} {row['itl_p50_ms']:>8.1f} "
                  f"{row['itl_p99_ms']:>8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"url": args.url, "model": model, "max_tokens": args.max_tokens,
                                               "requests_per_client": args.requests, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
