"""Prompt-lookup drafting, offline: how verify's lookup rule was chosen (docs/design.md
section 2), without running a model per rule.

    python benchmarks/lookup_offline.py --data build/smollm2-real.work [--split heldout] \
        [--costs build/costs-cpu-fp32.json] [--max-drafts 3,7,15] [--store] [--by-match] [--acceptance]
    python benchmarks/lookup_offline.py --task-set real --artifacts build/smollm2-onnx \
        --engine cpu-fp32 [--max-new-tokens 64] [--data build/smollm2-real.work --store] ...
    python benchmarks/lookup_offline.py --measure-costs build/costs-cpu-fp32.json \
        --artifacts build/smollm2-onnx --engine cpu-fp32

Under greedy decoding, verify's output is standard's, so a lookup draft's fate is fixed by
the greedy text alone: it is accepted up to its first token that differs from what the
greedy text says next. The greedy texts are the answers `train-recycler` wrote into its data
folder (prompt and answer token ids per sequence, from an engine under greedy), split by
source document into train and heldout; with --task-set, an engine's greedy answers to a
task set's prompts instead (the benchmark's own material, at its answer length). For each rule this walks every answer step by step
as verify would and counts base steps and tokens per step; with --costs (base-step latency
by new tokens and past length, measured on an engine by --measure-costs) it also estimates
the speedup over standard as sum of standard's step costs over sum of verify's. The
estimate leaves out the runtime's own per-step work, so it is an upper bound; `bench` and
benchmarks/verify_drafts.py measure the real thing.

Rules: "fixed": the latest earlier occurrence of the last 2 tokens proposes the next k
tokens (verify's rule until this round); "match": runtime.drafts.lookup_draft (the longest
earlier suffix proposes as many tokens as it is long, up to k); with --store, "match+store":
match, else a store of --data's train split answers (runtime.drafts.AnswerStore, as verify
drafts with an export's answers.npy).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.costs import StepCosts  # noqa: E402
from runtime.drafts import STORE_NGRAM, AnswerStore, lookup_draft  # noqa: E402
from runtime.request import MAX_DRAFT  # noqa: E402

PASTS = (100, 400, 1000, 1600)
NEWS = (1, 2, 3, 4, 6, 8, 12, 16)


def fixed_draft(tokens: np.ndarray, room: int, ngram: int = 2) -> list[int]:
    """The rule verify used before: the tokens after the latest earlier occurrence of the last
    `ngram` tokens, `room` of them (fewer at the end of the text)."""
    if len(tokens) <= ngram:
        return []
    windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], ngram)
    hits = np.flatnonzero((windows == tokens[-ngram:]).all(axis=1))
    return [] if not len(hits) else [int(t) for t in tokens[hits[-1] + ngram:hits[-1] + ngram + room]]


def load_answers(folder: Path, split: str) -> list[tuple[str, np.ndarray, int]]:
    """(kind, prompt + answer token ids, prompt length) of every sequence of the split: the
    shards train-recycler writes (recycle_export.train.load_split)."""
    from recycle_export.train import load_split

    out = [(kind, s.tokens.numpy(), s.prompt_len) for kind, seqs in load_split(folder, split).items() for s in seqs]
    if not out:
        raise SystemExit(f"no {split}-*.safetensors in {folder}: give a train-recycler data folder")
    return out


def task_set_answers(artifacts: str, engine: str | None, task_set: str,
                     max_new_tokens: int) -> list[tuple[str, np.ndarray, int]]:
    """(kind, prompt + answer token ids, prompt length) of an engine's greedy answers (stop
    tokens off, as the benchmarks run) to every prompt of a task set."""
    from runtime.generator import Generator
    from runtime.request import Request
    from runtime.tasks import encode_task_set

    gen = Generator.from_artifacts(artifacts, engine)
    tasks = encode_task_set(gen, task_set, max_new_tokens=max_new_tokens)
    request = Request("standard", max_new_tokens=max_new_tokens, stop_token_ids=())
    out = []
    for i, (prompt, kind) in enumerate(zip(tasks.prompts, tasks.kinds)):
        answer = gen.generate(prompt, request).tokens
        out.append((kind, np.asarray(list(prompt) + list(answer)), len(prompt)))
        print(f"\ranswered {i + 1}/{len(tasks.prompts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def step_cost(table: dict[int, dict[int, float]]):
    """Base-step milliseconds for `new` tokens over `past` positions, interpolated linearly in
    both from the measured table (clamped at its edges): runtime.costs.StepCosts.milliseconds."""
    pasts = sorted(table)
    news = sorted(table[pasts[0]])
    return StepCosts(tuple(pasts), tuple(news), tuple(tuple(table[p][n] for n in news) for p in pasts)).milliseconds


def walk(tokens: np.ndarray, prompt_len: int, draft, cost) -> tuple[int, float, float]:
    """verify over one greedy answer: (base steps, estimated verify ms, standard ms)."""
    i, steps, ms, standard_ms = prompt_len, 0, 0.0, 0.0
    while i < len(tokens):
        proposal = draft(tokens[:i], len(tokens) - i - 1)
        accepted = 0
        while accepted < len(proposal) and proposal[accepted] == tokens[i + accepted]:
            accepted += 1
        steps += 1
        if cost:
            ms += cost(len(proposal) + 1, i)
            standard_ms += sum(cost(1, i + j) for j in range(accepted + 1))
        i += accepted + 1
    return steps, ms, standard_ms


def match_table(answers, longest: int = 12) -> None:
    """At every answer position: how long the longest earlier suffix match is (1 .. longest
    or more) and how often its first follower is the greedy text's next token."""
    seen, right = np.zeros(longest + 1, int), np.zeros(longest + 1, int)
    for _, tokens, prompt_len in answers:
        for i in range(prompt_len, len(tokens)):
            draft = lookup_draft(tokens[:i], 1, longest)  # as long as the match, up to `longest`
            if draft:
                length = len(draft) if len(draft) < longest else longest
                seen[length] += 1
                right[length] += draft[0] == tokens[i]
    print("longest suffix match:  " + "  ".join(f"{n}{'+' if n == longest else ''}" .rjust(5) for n in range(1, longest + 1)))
    print("positions:             " + "  ".join(f"{seen[n]:5d}" for n in range(1, longest + 1)))
    print("next token follows:    " + "  ".join(f"{right[n] / max(seen[n], 1):5.2f}" for n in range(1, longest + 1)))


def acceptance_table(answers, store: AnswerStore, longest: int = 8) -> None:
    """How often a drafted token is accepted once the drafts before it were, by source
    (lookup, else the store) and the length of the suffix match that proposed the draft
    (2 .. longest or more): runtime.drafts.ACCEPTANCE."""
    counts = {source: np.zeros((longest + 1, 2), int) for source in ("lookup", "store")}
    for _, tokens, prompt_len in answers:
        for i in range(prompt_len, len(tokens) - 1):
            draft, source = lookup_draft(tokens[:i], 2, MAX_DRAFT), "lookup"
            if not draft:
                draft, source = store.draft(tokens[:i], STORE_NGRAM, MAX_DRAFT), "store"
            row = counts[source][min(len(draft), longest)]
            for j, token in enumerate(draft[:len(tokens) - i]):
                row[1] += 1
                if token != tokens[i + j]:
                    break
                row[0] += 1
    print("match length:  " + "  ".join(f"{n}{'+' if n == longest else ''}".rjust(5) for n in range(2, longest + 1)))
    for source, table in counts.items():
        print(f"{source:<15}" + "  ".join(f"{a / max(p, 1):5.2f}" for a, p in table[2:]))


def measure_costs(artifacts: str, engine: str | None, out: Path) -> None:
    from runtime.costs import measure_step_costs
    from runtime.generator import Generator

    gen = Generator.from_artifacts(artifacts, engine, check_hashes=False)
    costs = measure_step_costs(gen, repeats=10, pasts=PASTS, news=NEWS)
    table = {past: dict(zip(costs.news, row)) for past, row in zip(costs.pasts, costs.ms)}
    for past, row in table.items():
        print(f"past {past}: " + "  ".join(f"{n} new {ms:.2f} ms" for n, ms in row.items()))
    out.write_text(json.dumps({"engine": engine, "ms": table}, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a train-recycler data folder (greedy answers)")
    parser.add_argument("--task-set", help="instead of --data's held-out answers: an engine's greedy answers "
                        "to a task set (needs --artifacts; --engine, --max-new-tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--split", default="heldout", choices=("heldout", "train"))
    parser.add_argument("--kinds", default="real-", help="only sequences whose kind starts with this")
    parser.add_argument("--costs", type=Path, help="a step-cost table written by --measure-costs")
    parser.add_argument("--max-drafts", default="3,7,15")
    parser.add_argument("--store", action="store_true",
                        help="also: lookup, else an answer store of --data's train split")
    parser.add_argument("--by-match", action="store_true",
                        help="also: how often the first follower is right, by the length of the match")
    parser.add_argument("--acceptance", action="store_true",
                        help="also: acceptance per drafted token by source and match length (needs --data)")
    parser.add_argument("--measure-costs", type=Path, metavar="OUT", help="measure a step-cost table and stop")
    parser.add_argument("--artifacts")
    parser.add_argument("--engine")
    args = parser.parse_args()
    if args.measure_costs:
        if not args.artifacts:
            parser.error("--measure-costs needs --artifacts (and --engine)")
        return measure_costs(args.artifacts, args.engine, args.measure_costs)
    if not args.data and not args.task_set:
        parser.error("give --data or --task-set (or --measure-costs)")
    if args.task_set:
        if not args.artifacts:
            parser.error("--task-set needs --artifacts (and --engine)")
        answers = task_set_answers(args.artifacts, args.engine, args.task_set, args.max_new_tokens)
    else:
        answers = [a for a in load_answers(args.data, args.split) if a[0].startswith(args.kinds)]
    if args.by_match:
        match_table(answers)
    if args.acceptance:
        if not args.data:
            parser.error("--acceptance draws the store from --data's train split")
        train = load_answers(args.data, "train")
        acceptance_table(answers, AnswerStore.from_answers(tokens[p:] for _, tokens, p in train))
    cost = None
    if args.costs:
        loaded = json.loads(args.costs.read_text())["ms"]
        cost = step_cost({int(p): {int(n): v for n, v in row.items()} for p, row in loaded.items()})
    rules = {}
    for k in (int(k) for k in args.max_drafts.split(",")):
        rules[f"fixed n2 k{k}"] = lambda t, left, k=k: fixed_draft(t, min(k, left))
        rules[f"match n2 k{k}"] = lambda t, left, k=k: lookup_draft(t, 2, min(k, left))
    if args.store:
        if args.split == "train" or not args.data:
            parser.error("--store draws on --data's train split: measure on --split heldout or --task-set")
        train = load_answers(args.data, "train")
        store = AnswerStore.from_answers(tokens[prompt_len:] for _, tokens, prompt_len in train)
        for k in (int(k) for k in args.max_drafts.split(",")):
            rules[f"match+store k{k}"] = lambda t, left, k=k: (lookup_draft(t, 2, min(k, left))
                                                               or store.draft(t, STORE_NGRAM, min(k, left)))
    kinds = sorted({kind for kind, _, _ in answers}) + ["overall"]
    print(f"{len(answers)} {args.split} answers; per kind: tokens per base step"
          + (", estimated speedup over standard" if cost else ""))
    print("rule".ljust(18) + "".join(k.removeprefix("real-")[:13].rjust(15) for k in kinds))
    for name, rule in rules.items():
        totals = defaultdict(lambda: [0, 0, 0.0, 0.0])  # tokens, steps, verify ms, standard ms
        for kind, tokens, prompt_len in answers:
            steps, ms, standard_ms = walk(tokens, prompt_len, rule, cost)
            for group in (kind, "overall"):
                t = totals[group]
                t[0] += len(tokens) - prompt_len
                t[1] += steps
                t[2] += ms
                t[3] += standard_ms
        cells = [f"{t[0] / t[1]:.2f}" + (f" {t[3] / t[2]:.2f}x" if cost else "") for t in map(totals.get, kinds)]
        print(name.ljust(18) + "".join(c.rjust(15) for c in cells))


if __name__ == "__main__":
    main()
