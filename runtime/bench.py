"""Side-by-side benchmark of the decoding strategies in one process, on the same prompts.

Each repeat runs every strategy over every prompt, strategies interleaved so that they
share the machine's noise; a warm-up round runs first and is discarded. Decode speed per
repeat is (tokens after each prompt's first) / (decode seconds), summed over the prompts.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from runtime.files import write_text
from runtime.generator import Generator, Request
from runtime.sampling import SamplingParams

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
    speedup: float | None = None  # over standard, when standard ran


def run_bench(generator: Generator, prompts: list[list[int]], strategies: tuple[str, ...],
              max_new_tokens: int, repeats: int, warmup: int = 1,
              progress: Callable[[str], None] = lambda message: None) -> list[StrategyFigures]:
    """Greedy decoding with stop tokens off, so that every strategy generates the same
    number of tokens per prompt. Raises: GenerationError for a bad prompt."""
    speeds: dict[str, list[float]] = {s: [] for s in strategies}
    prefill: dict[str, list[float]] = {s: [] for s in strategies}
    last = {}
    for round_ in range(warmup + repeats):
        label = "warm-up" if round_ < warmup else f"repeat {round_ - warmup + 1}/{repeats}"
        for strategy in strategies:
            progress(f"{label}: {strategy}")
            request = Request(strategy, SamplingParams(), max_new_tokens, stop_token_ids=())
            results = [generator.generate(p, request) for p in prompts]
            if round_ < warmup:
                continue
            decoded = sum(r.stats.generated_tokens - 1 for r in results)
            seconds = sum(r.stats.decode_seconds for r in results)
            speeds[strategy].append(decoded / seconds)
            prefill[strategy].append(sum(r.stats.prompt_tokens for r in results)
                                     / sum(r.stats.prefill_seconds for r in results))
            last[strategy] = results
    figures = []
    for strategy in strategies:
        stats = [r.stats for r in last[strategy]]
        proposed = sum(s.drafts_proposed for s in stats)
        figures.append(StrategyFigures(
            strategy, statistics.median(speeds[strategy]), (min(speeds[strategy]), max(speeds[strategy])),
            statistics.median(prefill[strategy]), sum(s.generated_tokens for s in stats),
            sum(s.base_calls for s in stats), sum(s.module_calls for s in stats),
            sum(s.drafts_accepted for s in stats) / proposed if proposed else None))
    baseline = next((f for f in figures if f.strategy == "standard"), None)
    for f in figures:
        if baseline is not None:
            f.speedup = f.decode_tokens_per_s / baseline.decode_tokens_per_s
    return figures


def table(figures: list[StrategyFigures]) -> str:
    rows = [("strategy", "decode tok/s", "spread (min-max)", "prefill tok/s", "tokens",
             "base calls", "module calls", "acceptance", "speedup")]
    for f in figures:
        rows.append((f.strategy, f"{f.decode_tokens_per_s:.1f}", f"{f.spread[0]:.1f}-{f.spread[1]:.1f}",
                     f"{f.prefill_tokens_per_s:.0f}", str(f.tokens), str(f.base_calls), str(f.module_calls),
                     "-" if f.acceptance is None else f"{f.acceptance:.2f}",
                     "-" if f.speedup is None else f"{f.speedup:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(figures: list[StrategyFigures], path: Path, context: dict) -> None:
    write_text(Path(path), json.dumps({**context, "strategies": [asdict(f) for f in figures]}, indent=2) + "\n")


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
