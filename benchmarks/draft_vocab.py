"""The module's draft vocabulary size K, without training: the share of held-out answer
tokens among the K tokens most frequent in the train answers (the draft vocabulary that
train-recycler picks, recycle_export.train.draft_vocabulary), an upper bound on the
module's agreement at that K; and the LM head's share of a module step's weights.

    python benchmarks/draft_vocab.py --data build/smollm2-real.work --model build/smollm2-new \
        [--sizes 2048,4096,8192,16384] [--module-layers 1,2]

The head's share counts the multiply-adds per new token of the module's matrices (fusion,
decoder layers, the K rows of the LM head); attention over the past and the norms are left
out, so it holds for short contexts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recycle_export.checkpoint import load_config  # noqa: E402
from recycle_export.train import draft_vocabulary, load_split  # noqa: E402


def load_sets(folder: Path, split: str) -> dict:
    """The sequences of each data set of a split (recycle_export.train.load_split)."""
    sets = load_split(folder, split)
    if not sets:
        raise SystemExit(f"no {split}-*.safetensors in {folder}: give a train-recycler data folder")
    return sets


def module_weights(cfg, layers: int, head_rows: int) -> tuple[int, int]:
    """Multiply-adds per new token of the module's matrices, and of its LM head alone."""
    attention = cfg.dim * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)  # q, o; k, v
    layer = attention + 3 * cfg.dim * cfg.ffn_dim  # gate, up, down
    head = head_rows * cfg.dim
    return 2 * cfg.dim * cfg.dim + layers * layer + head, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a train-recycler data folder")
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint (for its shape)")
    parser.add_argument("--sizes", default="2048,4096,8192,16384")
    parser.add_argument("--module-layers", default="1,2")
    args = parser.parse_args()
    cfg = load_config(args.model)
    sizes = [int(k) for k in args.sizes.split(",")]
    train = [s for seqs in load_sets(args.data, "train").values() for s in seqs]
    heldout = load_sets(args.data, "heldout")
    answers = {name: torch.cat([s.tokens[s.prompt_len:] for s in seqs]) for name, seqs in heldout.items()}
    answers["overall"] = torch.cat(list(answers.values()))

    print(f"held-out answer tokens within the top K of the train answers ({len(train)} train sequences)")
    print("| set | tokens | " + " | ".join(f"K={k}" for k in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    everything = torch.arange(cfg.vocab_size)
    vocabularies = {k: draft_vocabulary(train, cfg.vocab_size, k) for k in sizes}
    vocabularies = {k: everything if v is None else v for k, v in vocabularies.items()}  # None: K >= V
    for name, tokens in answers.items():
        shares = [float(torch.isin(tokens, vocabularies[k]).float().mean()) for k in sizes]
        print(f"| {name} | {len(tokens)} | " + " | ".join(f"{s:.4f}" for s in shares) + " |")

    print("\nthe LM head's share of a module step's multiply-adds per new token (matrices only)")
    print("| module layers | " + " | ".join(f"K={k}" for k in [*sizes, cfg.vocab_size]) + " |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for layers in (int(n) for n in args.module_layers.split(",")):
        cells = []
        for k in [*sizes, cfg.vocab_size]:
            total, head = module_weights(cfg, layers, k)
            cells.append(f"{head / total:.2f} of {total / 1e6:.1f}M")
        print(f"| {layers} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
