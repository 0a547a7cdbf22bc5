"""Side-by-side benchmark of the decoding strategies in one process, on the same prompts.

Each repeat runs every strategy over every prompt, strategies interleaved so that they
share the machine's noise; a warm-up round runs first and is discarded. Decode speed per
repeat is (tokens after each prompt's first) / (decode seconds), summed over the prompts.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from runtime.files import write_text
from runtime.generator import Generator, Result
from runtime.request import DraftOptions, Request
from runtime.sampling import SamplingParams

OVERALL = "overall"  # the group of every prompt in run_bench_by_group's report
DEFAULT_PROMPTS = (
    "What is the capital of France? Tell me about the city.",
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator works in simple terms.",
    "Give me three tips for learning a new language.",
)


@dataclass
class StrategyFigures:
    strategy: str
    decode_tokens_per_s: float  # median over repeats
    spread: tuple[float, float]  # min and max over repeats
    prefill_tokens_per_s: float
    tokens: int  # generated per repeat, all prompts
    base_calls: int
    module_calls: int
    acceptance: float | None
    tokens_per_base_call: float | None  # after the prefill
    acceptance_at: tuple[float | None, ...] = ()  # verify: per draft position (runtime.request.Stats)
    acceptance_by_source: dict[str, float] = field(default_factory=dict)  # verify: per source that drafted
    speedup: float | None = None  # over standard, when standard ran


def _measure(generator: Generator, prompts: list[list[int]], strategies: tuple[str, ...],
             max_new_tokens: int, repeats: int, warmup: int, progress: Callable[[str], None],
             drafts: DraftOptions, min_confidence: float) -> dict[str, list[list[Result]]]:
    """Each strategy's results per measured repeat, one per prompt."""
    runs: dict[str, list[list[Result]]] = {s: [] for s in strategies}
    for round_ in range(warmup + repeats):
        label = "warm-up" if round_ < warmup else f"repeat {round_ - warmup + 1}/{repeats}"
        for strategy in strategies:
            progress(f"{label}: {strategy}")
            request = Request(strategy, SamplingParams(), max_new_tokens, stop_token_ids=(), drafts=drafts,
                              min_confidence=min_confidence)
            results = [generator.generate(p, request) for p in prompts]
            if round_ >= warmup:
                runs[strategy].append(results)
    return runs


def _figures(runs: dict[str, list[list[Result]]], rows: list[int]) -> list[StrategyFigures]:
    """Figures of the prompts at `rows`: decode speed per repeat summed over those prompts."""
    figures = []
    for strategy, repeats in runs.items():
        speeds, prefill = [], []
        for results in repeats:
            stats = [results[i].stats for i in rows]
            speeds.append(sum(s.generated_tokens - 1 for s in stats) / sum(s.decode_seconds for s in stats))
            prefill.append(sum(s.prompt_tokens for s in stats) / sum(s.prefill_seconds for s in stats))
        stats = [repeats[-1][i].stats for i in rows]
        proposed = sum(s.drafts_proposed for s in stats)
        figures.append(StrategyFigures(
            strategy, statistics.median(speeds), (min(speeds), max(speeds)), statistics.median(prefill),
            sum(s.generated_tokens for s in stats), sum(s.base_calls for s in stats),
            sum(s.module_calls for s in stats),
            sum(s.drafts_accepted for s in stats) / proposed if proposed else None,
            sum(s.generated_tokens - s.batch for s in stats) / max(sum(s.base_calls - 1 for s in stats), 1),
            _acceptance_at(stats), _acceptance_by_source(stats)))
    baseline = next((f for f in figures if f.strategy == "standard"), None)
    for f in figures:
        if baseline is not None:
            f.speedup = f.decode_tokens_per_s / baseline.decode_tokens_per_s
    return figures


def _acceptance_at(stats) -> tuple[float | None, ...]:
    proposed = [sum(column) for column in zip(*(s.proposed_at for s in stats))]
    accepted = [sum(column) for column in zip(*(s.accepted_at for s in stats))]
    return tuple(a / p if p else None for a, p in zip(accepted, proposed))


def _acceptance_by_source(stats) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for s in stats:
        for source, (accepted, proposed) in s.by_source.items():
            total = totals.setdefault(source, [0, 0])
            total[0] += accepted
            total[1] += proposed
    return {source: a / p for source, (a, p) in totals.items() if p}


def by_source(values: dict[str, float]) -> str:
    """Acceptance per draft source as "lookup 0.62, store 0.41" ("-" where none drafted)."""
    return ", ".join(f"{source} {v:.2f}" for source, v in values.items()) or "-"


def by_position(values: tuple[float | None, ...]) -> str:
    """Acceptance per draft position as "0.71/0.55/0.40", up to the last position drafted
    ("-" where none was drafted)."""
    drafted = [i for i, v in enumerate(values) if v is not None]
    return "-" if not drafted else "/".join("-" if v is None else f"{v:.2f}" for v in values[:drafted[-1] + 1])


def run_bench(generator: Generator, prompts: list[list[int]], strategies: tuple[str, ...],
              max_new_tokens: int, repeats: int, warmup: int = 1,
              progress: Callable[[str], None] = lambda message: None,
              drafts: DraftOptions = DraftOptions(), min_confidence: float = 0.0) -> list[StrategyFigures]:
    """Greedy decoding with stop tokens off, so that every strategy generates the same
    number of tokens per prompt; drafts and min_confidence as in runtime.request.Request.
    Raises: GenerationError for a bad prompt."""
    runs = _measure(generator, prompts, strategies, max_new_tokens, repeats, warmup, progress, drafts,
                    min_confidence)
    return _figures(runs, list(range(len(prompts))))


def run_bench_by_group(generator: Generator, prompts: list[list[int]], groups: list[str],
                       strategies: tuple[str, ...], max_new_tokens: int, repeats: int, warmup: int = 1,
                       progress: Callable[[str], None] = lambda message: None,
                       drafts: DraftOptions = DraftOptions(),
                       min_confidence: float = 0.0) -> dict[str, list[StrategyFigures]]:
    """run_bench once over all prompts, reported for each group (a label per prompt, e.g.
    a task kind; in first-seen order) and "overall"; each group's speedup is against its
    own standard. Raises: GenerationError for a bad prompt."""
    assert len(groups) == len(prompts)
    runs = _measure(generator, prompts, strategies, max_new_tokens, repeats, warmup, progress, drafts,
                    min_confidence)
    report = {g: _figures(runs, [i for i, label in enumerate(groups) if label == g]) for g in dict.fromkeys(groups)}
    report[OVERALL] = _figures(runs, list(range(len(prompts))))
    return report


def table(figures: list[StrategyFigures]) -> str:
    rows = [("strategy", "decode tok/s", "spread (min-max)", "prefill tok/s", "tokens",
             "base calls", "module calls", "acceptance", "by source", "by draft position", "tokens/base call",
             "speedup")]
    for f in figures:
        rows.append((f.strategy, f"{f.decode_tokens_per_s:.1f}", f"{f.spread[0]:.1f}-{f.spread[1]:.1f}",
                     f"{f.prefill_tokens_per_s:.0f}", str(f.tokens), str(f.base_calls), str(f.module_calls),
                     "-" if f.acceptance is None else f"{f.acceptance:.2f}", by_source(f.acceptance_by_source),
                     by_position(f.acceptance_at),
                     "-" if f.tokens_per_base_call is None else f"{f.tokens_per_base_call:.2f}",
                     "-" if f.speedup is None else f"{f.speedup:.2f}x"))
    return text_table(rows)


def group_table(report: dict[str, list[StrategyFigures]], prompts: dict[str, int]) -> str:
    """One row per group and strategy: the per-kind view of run_bench_by_group."""
    rows = [("kind", "prompts", "strategy", "decode tok/s", "spread (min-max)", "tokens", "acceptance",
             "by source", "by draft position", "tokens/base call", "speedup")]
    for group, figures in report.items():
        for f in figures:
            rows.append((group, str(prompts[group]), f.strategy, f"{f.decode_tokens_per_s:.1f}",
                         f"{f.spread[0]:.1f}-{f.spread[1]:.1f}", str(f.tokens),
                         "-" if f.acceptance is None else f"{f.acceptance:.2f}", by_source(f.acceptance_by_source),
                         by_position(f.acceptance_at),
                         "-" if f.tokens_per_base_call is None else f"{f.tokens_per_base_call:.2f}",
                         "-" if f.speedup is None else f"{f.speedup:.2f}x"))
    return text_table(rows)


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as aligned columns, a rule under the first (the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(figures: list[StrategyFigures], path: Path, context: dict,
               groups: dict[str, list[StrategyFigures]] | None = None) -> None:
    """The figures with `context`; `groups` adds the figures of each group (task kind)."""
    record = {**context, "strategies": [asdict(f) for f in figures]}
    if groups:
        record["kinds"] = {g: [asdict(f) for f in fs] for g, fs in groups.items()}
    write_text(Path(path), json.dumps(record, indent=2) + "\n")


def write_chart(figures: list[StrategyFigures], path: Path, title: str) -> None:
    """A bar chart of decode tokens/s with the spread as error bars (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [f.strategy for f in figures]
    medians = [f.decode_tokens_per_s for f in figures]
    errors = [[m - f.spread[0] for m, f in zip(medians, figures)], [f.spread[1] - m for m, f in zip(medians, figures)]]
    bars = ax.bar(names, medians, yerr=errors, capsize=4, color=["#888888", "#2a7ab9", "#3a9a5b"][:len(names)])
    for bar, f in zip(bars, figures):
        label = f"{f.decode_tokens_per_s:.1f}" + ("" if f.speedup is None else f"\n{f.speedup:.2f}x")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, f.spread[1]), ha="center", va="bottom",
                    xytext=(0, 3), textcoords="offset points", fontsize=8)
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, max(f.spread[1] for f in figures) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
