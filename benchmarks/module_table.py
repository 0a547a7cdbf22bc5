"""The held-out figures of trained modules side by side: top-1 agreement per data set, per
draft position, and the drafts a chain of 3 accepts, from each checkpoint's training.json
(written by `cli.py train-recycler`).

    python benchmarks/module_table.py build/smollm2-real build/smollm2-real3 [--before]

--before also shows the first checkpoint's module before its training (`heldout_before`:
with --init checkpoint, the module it went on from), on the same held-out answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(label: str, figures: dict) -> list[str]:
    sets = figures["sets"]
    cells = [f"{sets[name]['top1_agreement']:.3f}" for name in sets]
    positions = "/".join(f"{a:.3f}" for a in figures["position_agreement"])
    return [label, *cells, f"{figures['top1_agreement']:.3f}", positions, f"{figures['chain_accepted']:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--before", action="store_true")
    args = parser.parse_args()
    reports = {str(c): json.loads((c / "training.json").read_text()) for c in args.checkpoints}
    first = next(iter(reports.values()))
    names = list(first["heldout_after"]["sets"])
    table = [["module", *names, "overall", "by draft position 1/2/3", "chain of 3 accepts"]]
    if args.before and first["heldout_before"]:
        table.append(rows("before (the module it started from)", first["heldout_before"]))
    for label, report in reports.items():
        if list(report["heldout_after"]["sets"]) != names:
            raise SystemExit(f"{label} was evaluated on other held-out sets than {args.checkpoints[0]}")
        options = report["options"]
        table.append(rows(f"{label} (unroll {options.get('unroll', 1)}, {' + '.join(options.get('data', []))})",
                          report["heldout_after"]))
    print("| " + " | ".join(table[0]) + " |")
    print("|" + "---|" * len(table[0]))
    for row in table[1:]:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
