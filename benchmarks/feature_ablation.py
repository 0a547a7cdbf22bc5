"""Which base feature should the recyclable module read? (issue 15, item 2)

Three features, each trained the same way from the same start and measured on the same
held-out answers and on the real-task benchmark's answers (teacher-forced agreement per draft
position, as train-recycler reports it):

- final: the base's final-normed last hidden state h, what full_step outputs today
  (RecycleGPT); the module's chain feeds back its own final-normed g.
- prenorm: the last hidden state before the final norm (EAGLE), divided by one constant
  (its median RMS over the training positions) so that it enters the fusion at h's scale;
  the chain feeds back the module's own pre-norm state.
- fusion: a learned projection of three layers (EAGLE-3): the outputs of a low and a middle
  base layer (fusion_layers: SmolLM2's 2 and 15), each RMS-normalised without a weight (SmolLM2's residual stream reaches ~25,000 from
  its early layers on), and h. The projection starts as [0, 0, I], so this variant starts as
  exactly the module it goes on from, and can only add what the lower layers carry.

Note that h = w * x / rms(x) for the pre-norm x: the two differ by a per-position scalar and
a per-channel weight the fusion can absorb, so prenorm can add only rms(x).

    python benchmarks/feature_ablation.py extract --model build/smollm2-new \
        --data build/smollm2-real.work --artifacts build/smollm2-new-onnx --engine cpu-fp32 \
        --cache build/features
    python benchmarks/feature_ablation.py train --variant fusion --model build/smollm2-new \
        --cache build/features --out build/features/fusion.pt [--epochs 1 --lr 1e-3 --unroll 3]
    python benchmarks/feature_ablation.py eval --cache build/features \
        --module final=build/cap1 --module fusion=build/features/fusion.pt

`train` goes on from the checkpoint's trained module (or, with --init base-layer, starts a
fresh one) with train-recycler's recipe (the same batches, schedule, loss and position
sampling for a seed), so `final` trained here is the control that `train-recycler` with the
same options would give (checked: equal losses on a batch, and equal held-out figures). The
features come from one teacher-forced float32 PyTorch pass of the base per sequence (the
shards' h, from the answers engine, is kept for the final feature).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recycle_export.checkpoint import load_checkpoint  # noqa: E402
from recycle_export.distill_data import Sequence  # noqa: E402
from recycle_export.model import apply_rotary, rotary  # noqa: E402
from recycle_export.real_prompts import KINDS  # noqa: E402
from recycle_export.train import (CHAIN, TrainOptions, _agreement, _epoch_batches, _module_states,  # noqa: E402
                                  init_recycler_from_base, load_split, recycler_loss)

VARIANTS = ("final", "prenorm", "fusion")
# train-recycler's order of the data sets (recycle_export.train._prompt_lists), which fixes the batches
SET_ORDER = tuple(f"real-{kind}" for kind in KINDS) + ("instructions", "requests")


def fusion_layers(n_layers: int) -> tuple[int, int]:
    """The base layers (1-based) whose outputs the fusion reads beside h: EAGLE-3's low and
    middle ones (SmolLM2's 30 layers: 2 and 15)."""
    return min(2, n_layers), max(1, n_layers // 2)


@torch.no_grad()
def base_features(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """One causal pass of the base over `tokens` (T,): the outputs of the fusion_layers (low,
    mid), the last hidden state before the final norm, and h after it, each (T, dim) float16.
    scaled_dot_product_attention on one unpadded row is the model's attention ~3x faster."""
    cfg, n = model.cfg, len(tokens)
    low, mid = fusion_layers(cfg.n_layers)
    x = model.base.embed_tokens(tokens[None])  # (1, T, dim)
    cos, sin = rotary(torch.arange(n)[None], cfg, x.dtype)
    out = {}
    for number, layer in enumerate(model.base.layers, 1):
        attn = layer.self_attn
        y = layer.input_layernorm(x)
        q = attn.q_proj(y).view(1, n, attn.n_heads, attn.head_dim).transpose(1, 2)  # (1, H, T, D)
        k = attn.k_proj(y).view(1, n, attn.n_kv_heads, attn.head_dim).transpose(1, 2)  # (1, H_kv, T, D)
        v = attn.v_proj(y).view(1, n, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (1, H, T, D)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(1, n, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if number == low:
            out["low"] = x[0].half()
        if number == mid:
            out["mid"] = x[0].half()
    out["pre"] = x[0].half()
    out["h"] = model.base.norm(x)[0].half()
    return out


def extract(args) -> None:
    """Features of every train and held-out sequence of a work folder, and of an engine's
    greedy answers to the real-task benchmark, into --cache."""
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    model = load_checkpoint(Path(args.model)).model.eval()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    splits = {split: load_split(Path(args.data), split) for split in ("train", "heldout")}
    if not splits["train"]:
        raise SystemExit(f"no train-*.safetensors in {args.data}: give a train-recycler work folder")
    from lookup_offline import task_set_answers  # the benchmark's prompts and the engine's greedy answers

    bench = task_set_answers(args.artifacts, args.engine, args.task_set, args.max_new_tokens)
    splits["bench"] = {}
    for kind, tokens, prompt_len in bench:
        splits["bench"].setdefault(kind, []).append(Sequence(torch.from_numpy(tokens.astype(np.int64)), None, prompt_len))
    scale = None
    for split, sets in splits.items():
        tensors, meta, started = {}, {}, time.perf_counter()
        total = sum(len(s.tokens) for seqs in sets.values() for s in seqs)
        done = 0
        for name, seqs in sets.items():
            for i, s in enumerate(seqs):
                feats = base_features(model, s.tokens[:-1])
                if s.hidden is not None:
                    feats["h"] = s.hidden  # the answers engine's own h, which the module was trained on
                for key, value in feats.items():
                    tensors[f"{name}.{i}.{key}"] = value.contiguous()
                tensors[f"{name}.{i}.tokens"] = s.tokens
                meta[f"{name}.{i}"] = s.prompt_len
                done += len(s.tokens)
                print(f"\r{split}: {done}/{total} positions, {done / (time.perf_counter() - started):.0f}/s",
                      end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        if split == "train":  # prenorm's constant: the median RMS of the pre-norm state
            rms = torch.cat([tensors[k].float().pow(2).mean(-1).sqrt() for k in tensors if k.endswith(".pre")])
            scale = float(rms.median())
        save_file(tensors, str(cache / f"{split}.safetensors"),
                  metadata={"prompt_len": json.dumps(meta), "sets": json.dumps(list(sets)),
                            "prenorm_scale": str(scale),
                            "fusion_layers": json.dumps(fusion_layers(model.cfg.n_layers))})
        print(f"{split}: {len(meta)} sequences in {time.perf_counter() - started:.0f} s", file=sys.stderr)


class Featured(Sequence):
    """A sequence with its base features: tokens, hidden (= h) and prompt_len as train's."""

    def __init__(self, tokens, feats: dict[str, torch.Tensor], prompt_len: int):
        super().__init__(tokens, feats["h"], prompt_len)
        self.feats = feats


def load_cache(path: Path) -> tuple[dict[str, list[Featured]], float]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    prompt_len = json.loads(meta["prompt_len"])
    sets: dict[str, list[Featured]] = {}
    for key, length in prompt_len.items():  # insertion order: the sets' and sequences' order
        name = key.rsplit(".", 1)[0]
        feats = {part: tensors[f"{key}.{part}"] for part in ("low", "mid", "pre", "h")}
        sets.setdefault(name, []).append(Featured(tensors[f"{key}.tokens"], feats, length))
    return sets, float(meta["prenorm_scale"]) if meta["prenorm_scale"] != "None" else None


def _padded(seqs: list[Featured], part: str, longest: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), longest, seqs[0].feats[part].shape[-1])
    for i, s in enumerate(seqs):
        out[i, :len(s.hidden)] = s.feats[part][:len(s.hidden)].float()
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    """RMS normalisation without a weight (a padded zero row stays zero)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Ablation(torch.nn.Module):
    """The checkpoint's model with a feature variant: what the module's first pass reads at
    each position (first_input) and what its chain feeds back (states)."""

    def __init__(self, model, variant: str, prenorm_scale: float | None):
        super().__init__()
        if variant not in VARIANTS:
            raise SystemExit(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.model, self.variant, self.scale = model, variant, prenorm_scale
        dim = model.cfg.dim
        self.reduce = torch.nn.Linear(3 * dim, dim, bias=False) if variant == "fusion" else None

    def start(self) -> None:
        """Begin where the checkpoint's module is: fusion as exactly that module, prenorm with
        the norm's weight folded into the fusion (so it sees h whenever rms(x) = scale)."""
        dim = self.model.cfg.dim
        with torch.no_grad():
            if self.reduce is not None:
                self.reduce.weight.zero_()
                self.reduce.weight[:, 2 * dim:] = torch.eye(dim)
            if self.variant == "prenorm":
                self.model.recycler.fuse.weight[:, :dim] *= self.model.base.norm.weight

    def first_input(self, seqs: list[Featured], longest: int) -> torch.Tensor | None:
        """(B, T, dim): the feature of every position (None for final: the batch's h)."""
        if self.variant == "final":
            return None
        if self.variant == "prenorm":
            return _padded(seqs, "pre", longest) / self.scale
        parts = [_unit(_padded(seqs, "low", longest)), _unit(_padded(seqs, "mid", longest)), _padded(seqs, "h", longest)]
        return self.reduce(torch.cat(parts, dim=-1))

    def states(self, seqs: list[Featured], x, h, mask, passes: int) -> list[torch.Tensor]:
        """The module's g_j for each draft position of a chain with this variant's feature
        (train._module_states): the `features` train.recycler_loss and _agreement take."""
        return _module_states(self.model, x, h, mask, passes, self.first_input(seqs, x.shape[1]),
                              feed_pre_norm=self.variant == "prenorm")


def loss(ablation: Ablation, seqs: list[Featured], options: TrainOptions, generator: torch.Generator) -> torch.Tensor:
    """train.recycler_loss with the variant's feature."""
    return recycler_loss(ablation.model, seqs, options, generator, ablation.states)


def train(args) -> None:
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(Path(args.model))
    sets, scale = load_cache(Path(args.cache) / "train.safetensors")
    train_seqs = [s for name in SET_ORDER if name in sets for s in sets[name]]
    options = TrainOptions(epochs=args.epochs, lr=args.lr, unroll=args.unroll, seed=0)
    if args.init == "base-layer":  # a fresh module, as train-recycler's default starts one
        init_recycler_from_base(ckpt.model)
    ablation = Ablation(ckpt.model, args.variant, scale)
    ablation.start()
    model = ablation.model
    for p in model.base.parameters():
        p.requires_grad_(False)
    params = [p for p in ablation.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    steps = [b for epoch in range(options.epochs) for b in _epoch_batches(train_seqs, options, epoch)]
    started = time.perf_counter()
    ablation.train()
    for step, indices in enumerate(steps):
        lr = options.lr * 0.5 * (1 + math.cos(math.pi * step / len(steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(ablation, [train_seqs[i] for i in indices], options,
                         torch.Generator().manual_seed(options.seed * 1_000_003 + step))
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"\rstep {step + 1}/{len(steps)} loss {value.item():.3f} {time.perf_counter() - started:.0f} s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    state = {k: v for k, v in ablation.state_dict().items() if not k.startswith("model.base.")}
    torch.save({"variant": args.variant, "state": state, "draft_tokens": model.recycler.draft_tokens,
                "seconds": round(time.perf_counter() - started)}, args.out)


def agreement(ablation: Ablation, seqs: list[Featured]) -> dict:
    """Per draft position k = 1..CHAIN, top-1 agreement with the base's next token on answer
    positions, and the drafts a greedy chain of CHAIN accepts on average (train._agreement)."""
    figures = _agreement(ablation.model, seqs, ablation.states)
    return {"tokens": figures["tokens"], "position_agreement": [round(a, 4) for a in figures["position_agreement"]],
            "chain_accepted": round(figures["chain_accepted"], 3)}


def load_module(spec: str, model_path: str, scale: float | None) -> tuple[str, Ablation]:
    """NAME=PATH: a train-recycler checkpoint (variant final) or a .pt this script wrote."""
    name, _, path = spec.partition("=")
    if path.endswith(".pt"):
        saved = torch.load(path, weights_only=True)
        ablation = Ablation(load_checkpoint(Path(model_path)).model, saved["variant"], scale)
        ablation.load_state_dict(saved["state"], strict=False)
        ablation.model.recycler.set_draft_tokens(saved["draft_tokens"])
    else:
        ablation = Ablation(load_checkpoint(Path(path)).model, "final", scale)
    return name, ablation.eval()


def evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    _, scale = load_cache(cache / "train.safetensors") if args.prenorm_scale is None else (None, args.prenorm_scale)
    splits = {split: load_cache(cache / f"{split}.safetensors")[0] for split in ("heldout", "bench")}
    report = {}
    for spec in args.module:
        name, ablation = load_module(spec, args.model, scale)
        report[name] = {}
        for split, sets in splits.items():
            per_set = {set_name: agreement(ablation, seqs) for set_name, seqs in sets.items()}
            tokens = sum(r["tokens"] for r in per_set.values())
            overall = {"tokens": tokens,
                       "position_agreement": [round(sum(r["position_agreement"][k] * r["tokens"] for r in per_set.values())
                                                    / tokens, 4) for k in range(CHAIN)],
                       "chain_accepted": round(sum(r["chain_accepted"] * r["tokens"] for r in per_set.values()) / tokens, 3)}
            report[name][split] = {"overall": overall, "sets": per_set}
            print(f"{name:10s} {split:8s} top-1 by draft position {overall['position_agreement']} "
                  f"chain of {CHAIN} accepts {overall['chain_accepted']}  "
                  + "  ".join(f"{s}:{r['position_agreement'][0]:.3f}" for s, r in per_set.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", help="the base's features for the training data and the benchmark")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a train-recycler work folder (its train and held-out shards)")
    p.add_argument("--artifacts", required=True, help="export folder whose engine answers the benchmark")
    p.add_argument("--engine", default=None)
    p.add_argument("--task-set", default="real")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--cache", required=True)
    p.set_defaults(run=extract)
    p = sub.add_parser("train", help="go on training the checkpoint's module with a feature variant")
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--unroll", type=int, default=3)
    p.add_argument("--init", choices=("checkpoint", "base-layer"), default="checkpoint",
                   help="go on from the checkpoint's module, or start one afresh from the base's last layer")
    p.set_defaults(run=train)
    p = sub.add_parser("eval", help="agreement per draft position on the held-out answers and the benchmark's")
    p.add_argument("--cache", required=True)
    p.add_argument("--model", required=True, help="the checkpoint the .pt modules went on from")
    p.add_argument("--module", action="append", required=True, help="NAME=PATH (checkpoint folder or .pt)")
    p.add_argument("--prenorm-scale", type=float, default=None)
    p.add_argument("--json", default=None)
    p.set_defaults(run=evaluate)
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
