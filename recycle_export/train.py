"""Training the recyclable module (docs/design.md section 1), resumable, with a held-out evaluation.

Frozen base (the default): the module learns, at every position j, to predict x_{j+1}
from (h_{j-1}, x_j). The loss (recycler_loss) is cross-entropy to the next token plus a
distillation term KL(base || module) on a sample of positions, optionally plus a regression
of the module's g_j onto the base's h_j (EAGLE's feature loss). The data is self-distillation
(recycle_export.distill_data): the base's greedy answers, whose hidden states are kept
from the decoding pass, so training never runs the frozen base again.
Joint training (--joint) also trains the base: L = L_lm + L_rec, with h recomputed.

The prompts come from named data sets (TrainOptions.data): the template sets of
runtime/prompts.py and `real`, prompts of six kinds built around real documents
(recycle_export/real_prompts.py), each kind its own set in the reports. Work is kept in a
sibling folder `<out>.work/`: data shards, named by a digest of their prompts, and the latest
training state, so a rerun resumes where the last one stopped; asking for more prompts, or
adding a data set, only generates the shards that are missing.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from recycle_export.checkpoint import Checkpoint, check_output, load_checkpoint, save_checkpoint
from recycle_export.distill_data import (Sequence, engine_sequences, generate_sequences, load_sequences,
                                         save_sequences)
from recycle_export import real_prompts
from runtime.prompts import TEMPLATE_SETS, prompts
from recycle_export.model import RecycleGPT, rotary, run_layers
from runtime.drafts import answer_store_tokens
from runtime.errors import CheckpointError, ConfigError
from runtime.files import atomic_path, write_json
from runtime.request import check_threads
from runtime.tokenizer import TextCodec

log = logging.getLogger(__name__)

SHARD = 64  # prompts per data shard: the unit of resumable data generation
# Positions (prompt + answer, summed over a batch's rows) per generation batch: 64 short
# prompts at once, fewer long ones (a batch's attention scores grow with rows x length^2).
GENERATION_BATCH_POSITIONS = 16_384
DATA_SETS = (*TEMPLATE_SETS, "real")
# bfloat16 writes answers ~2x faster than float32 on CPUs with AVX512-BF16 (64 SmolLM2 answers:
# 245 vs ~112 answer tokens/s); its greedy tokens equal float32's argmax at 98.5% of positions
# and its hidden states differ by 1.8% (relative norm), noise the module is robust to.
GENERATION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainOptions:
    train_prompts: int = 512  # from each data set (all of a set that has fewer), unless `data` says
    heldout_prompts: int = 48  # from each data set
    max_new_tokens: int = 160
    epochs: int = 3
    batch_size: int = 8  # sequences per step
    lr: float = 2e-3
    distill_weight: float = 1.0
    # Ablation on SmolLM2 (640 prompts, 2 epochs, held-out agreement): tokens alone at a 25%
    # sample 0.281 in 294 s, plus features 0.271, tokens at every position 0.301 in 1029 s;
    # so: no feature term by default, and epochs bought with the sampled LM head.
    feature_weight: float = 0.0
    logit_fraction: float = 0.25  # of the positions whose tokens go through the LM head per step
    joint: bool = False
    seed: int = 0
    checkpoint_every: int = 25  # steps
    threads: int | None = None
    generation_dtype: str = "bfloat16"  # the base's dtype while it writes the answers
    bfloat16: bool = True  # autocast the training steps' matmuls (float32 master weights)
    init: str = "base-layer"  # or "checkpoint": go on from the checkpoint's trained module
    # Decoder layers of the module (None: the checkpoint's recycle_layers). With init
    # "checkpoint", more than the checkpoint has grows its module (set_recycle_layers).
    module_layers: int | None = None
    # The module's LM head scores only the K tokens most frequent in the training answers
    # (Recycler.draft_tokens); 0: the whole vocabulary. On SmolLM2 (49152 tokens) 8192 cost
    # 0.001 of held-out agreement (0.5335 -> 0.5327) and 5/6 of the module's LM head.
    draft_vocab: int = 8192
    # The data sets and how many training prompts each gives: "NAME" (train_prompts of it)
    # or "NAME=N"; NAME from DATA_SETS. `real` splits its count evenly over its six kinds.
    data: tuple[str, ...] = tuple(TEMPLATE_SETS)
    # Draft positions trained per position (1: the first draft only, as RecycleGPT; 2-3:
    # EAGLE-3's training-time test, the module also fed its own states, for chained drafts).
    unroll: int = 1
    # Positions (rows x longest sequence) per training step: sequences are batched by length
    # up to this many, or `batch_size` rows, whichever comes first (long prompts of the real
    # set would otherwise pad every row of a batch to ~2,000 positions).
    batch_positions: int = 8192
    # Write the answers with an ONNX Runtime engine of the same base instead of PyTorch
    # (distill_data.engine_sequences): an export folder, and an engine built under it (None:
    # its exported graphs). On SmolLM2 the fused cpu-fp32 engine writes long-prompt answers
    # ~10x faster than PyTorch in bfloat16, and its float32 greedy answers are the ones that
    # engine's users get.
    answers_artifacts: str | None = None
    answers_engine: str | None = None
    # Where training (and answers written by PyTorch) runs: "cpu", or "cuda" / "cuda:N" for an
    # NVIDIA GPU. The data shards and checkpoints are the same either way, so a run can
    # resume on another device.
    device: str = "cpu"

    def data_sets(self) -> list[tuple[str, int]]:
        """(name, training prompts) per data set in `data`."""
        out = []
        for entry in self.data:
            name, _, count = entry.partition("=")
            out.append((name, int(count) if count else self.train_prompts))
        return out

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data must name at least one data set")
        for entry in self.data:
            name, _, count = entry.partition("=")
            if name not in DATA_SETS:
                raise ConfigError(f"data set {name!r} is unknown (expected one of {', '.join(DATA_SETS)})")
            if count and not (count.isdigit() and int(count) > 0):
                raise ConfigError(f"data set {entry!r}: the count after '=' must be a positive integer")
        for name in ("train_prompts", "heldout_prompts", "max_new_tokens", "epochs", "batch_size", "checkpoint_every",
                     "unroll", "batch_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.distill_weight < 0 or self.feature_weight < 0:
            raise ConfigError("lr must be > 0, distill_weight and feature_weight >= 0")
        if not 0 < self.logit_fraction <= 1:
            raise ConfigError(f"logit_fraction must be in (0, 1], got {self.logit_fraction}")
        if self.init not in ("base-layer", "checkpoint"):
            raise ConfigError(f"init must be 'base-layer' or 'checkpoint', got {self.init!r}")
        if self.module_layers is not None and self.module_layers < 1:
            raise ConfigError(f"module_layers must be >= 1, got {self.module_layers}")
        if self.draft_vocab < 0:
            raise ConfigError(f"draft_vocab must be >= 0 (0: the whole vocabulary), got {self.draft_vocab}")
        check_threads(self.threads)
        check_device(self.device)
        if self.generation_dtype not in GENERATION_DTYPES:
            raise ConfigError(f"generation_dtype must be one of {sorted(GENERATION_DTYPES)}, got {self.generation_dtype!r}")


def check_device(device: str) -> None:
    """Refuse a training device other than "cpu" or an available CUDA device.

    Raises:
        ConfigError: naming what was asked and what this machine has.
    """
    kind, _, index = device.partition(":")
    if device == "cpu":
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this PyTorch sees no CUDA device "
                          f"(PyTorch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def init_recycler_from_base(model: RecycleGPT) -> None:
    """Start the module as "one more base layer": its decoder layers copy the base's last
    layers, and the fusion passes h_{j-1} + embed(x_j) through (two identity blocks)."""
    with torch.no_grad():
        for layer, source in zip(model.recycler.layers, model.base.layers[-len(model.recycler.layers):]):
            layer.load_state_dict(source.state_dict())
        eye = torch.eye(model.cfg.dim)
        model.recycler.fuse.weight.copy_(torch.cat([eye, eye], dim=1))  # (dim, 2 dim)
        model.recycler.norm.weight.copy_(model.base.norm.weight)


def set_recycle_layers(model: RecycleGPT, layers: int) -> None:
    """Give the module `layers` decoder layers, in place. Growing keeps it the same function:
    the trained layers keep their weights, and each added one copies the last with its
    attention output and MLP down projections zeroed, so it passes the residual through
    until training moves them. Fewer layers drop the last ones (another function).
    model.cfg.recycle_layers follows, so the checkpoint, export and runtime size the module by it."""
    with torch.no_grad():
        del model.recycler.layers[layers:]
        while len(model.recycler.layers) < layers:
            added = copy.deepcopy(model.recycler.layers[-1])
            added.self_attn.o_proj.weight.zero_()
            added.mlp.down_proj.weight.zero_()
            model.recycler.layers.append(added)
    model.cfg = dataclasses.replace(model.cfg, recycle_layers=layers)


def _batch(seqs: list[Sequence], dim: int, device: torch.device | str = "cpu"):
    """Right-padded tensors for teacher forcing, on `device`: inputs x_0..x_{T-1}, targets
    x_1..x_T, the base's h_0..h_{T-1} and the padding mask."""
    longest = max(len(s.hidden) for s in seqs)
    b = len(seqs)
    x = torch.zeros(b, longest, dtype=torch.long)
    y = torch.full((b, longest), -100, dtype=torch.long)  # -100: ignored by cross_entropy
    h = torch.zeros(b, longest, dim)
    mask = torch.zeros(b, longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        t = len(s.hidden)
        x[i, :t], y[i, :t], h[i, :t], mask[i, :t] = s.tokens[:t], s.tokens[1:t + 1], s.hidden.float(), 1
    return x.to(device), y.to(device), h.to(device), mask.to(device)


def _shifted(h: torch.Tensor) -> torch.Tensor:
    """h_{j-1} at every position j, zero at j = 0: (B, T, dim) -> (B, T, dim)."""
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)


def _chain_allowed(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Which keys draft position k's queries see in a teacher-forced chain, (B, 1, T, k T)
    over the keys of passes 1..k side by side.

    At run time the k-th draft of a chain started at position p sits at j = p + k - 1; the
    module cache then holds positions up to j - k + 1 computed from the base's h (pass 1),
    and one position each from the chain's earlier drafts: draft m's key at j - k + m.
    """
    t = mask.shape[1]
    j = torch.arange(t, device=mask.device)[:, None]  # queries
    i = torch.arange(t, device=mask.device)[None, :]  # keys
    blocks = [(i <= j - k + 1)[None] & mask[:, None, :].bool()]  # (B, T, T)
    blocks += [(i == j - k + m)[None].expand(len(mask), t, t) for m in range(2, k + 1)]
    return torch.cat(blocks, dim=-1)[:, None]  # (B, 1, T, k T)


def _module_states(model: RecycleGPT, x, h, mask, passes: int = 1, first: torch.Tensor | None = None,
                   feed_pre_norm: bool = False) -> list[torch.Tensor]:
    """The module's g_j at every position of a teacher-forced batch, (B, T, dim), for each
    draft position of a chain (EAGLE-3's training-time test): pass 1 takes x_j with the
    base's h_{j-1} (zero at j = 0) on an empty cache, as the first draft does
    (RecycleGPT.recycle_step); pass k > 1 takes x_j with pass k-1's g_{j-1}, the module's own
    state, and attends as the k-th draft of a chain does (_chain_allowed). Pass k's g_j
    predicts x_{j+1} like pass 1's.

    For other features (benchmarks/feature_ablation.py): `first` (B, T, dim) is what pass 1
    reads in place of h, and with `feed_pre_norm` pass k > 1 reads pass k-1's state before
    the module's final norm in place of g."""
    positions = torch.arange(x.shape[1], device=x.device).expand_as(x)
    embedded = model.base.embed_tokens(x)  # (B, T, dim)
    fused = model.recycler.fuse(torch.cat([_shifted(h if first is None else first), embedded], dim=-1))
    z, present = run_layers(model.recycler.layers, fused, positions, mask,
                            model.empty_kv(model.cfg.recycle_layers, len(x)), model.cfg)
    states, keys = [model.recycler.norm(z)], [present]  # keys[pass][layer] = (key, value), (B, H_kv, T, D)
    cos, sin = rotary(positions, model.cfg, states[0].dtype)
    for k in range(2, passes + 1):
        allowed = _chain_allowed(mask, k)
        fed = z if feed_pre_norm else states[-1]
        z = model.recycler.fuse(torch.cat([_shifted(fed), embedded], dim=-1))  # (B, T, dim)
        present = []
        for n, layer in enumerate(model.recycler.layers):
            past = tuple(torch.cat([kv[n][part] for kv in keys], dim=2) for part in (0, 1))  # (B, H_kv, (k-1) T, D)
            z, (key, value) = layer(z, cos, sin, allowed, past)
            present.append((key[:, :, -x.shape[1]:], value[:, :, -x.shape[1]:]))
        keys.append(present)
        states.append(model.recycler.norm(z))
    return states


def recycler_loss(model: RecycleGPT, seqs: list[Sequence], options: TrainOptions,
                  generator: torch.Generator, features=None) -> torch.Tensor:
    """The module's training loss on a batch.

    - feature regression (`feature_weight`, EAGLE's): smooth L1 between the module's g_j and
      the base's h_j, at every position (both are the vector the LM head reads, so g_j ~ h_j
      means the same next-token distribution); cheap, as it never touches the LM head.
    - tokens: cross-entropy to x_{j+1}, plus `distill_weight` x KL(base || module) against the
      base's logits, on a random `logit_fraction` of the positions: the LM head is ~80% of a
      SmolLM2 module step's cost, so sampling positions makes training several times faster.
    Both for each of `unroll` draft positions of a chain (_module_states), averaged.
    `features(seqs, x, h, mask, passes)` replaces _module_states (another base feature:
    benchmarks/feature_ablation.py).
    """
    x, y, h, mask = _batch(seqs, model.cfg.dim, options.device)
    lm_loss = torch.zeros((), device=x.device)
    if options.joint:  # recompute h with gradients through the base
        positions = torch.arange(x.shape[1], device=x.device).expand_as(x)
        base = model.base_step(x, positions, mask, model.empty_kv(model.cfg.n_layers, len(seqs)), x.shape[1])
        lm_loss = F.cross_entropy(base.logits.flatten(0, 1), y.flatten())
        h = base.hidden
    valid = y != -100  # (B, T)
    loss = torch.zeros((), device=x.device)
    states = (features or _default_features(model))(seqs, x, h, mask, options.unroll)
    for k, g in enumerate(states, 1):
        at = valid.clone()
        at[:, :k - 1] = False  # the k-th draft of a chain needs k-1 positions before it
        if options.feature_weight:
            loss = loss + options.feature_weight * F.smooth_l1_loss(g[at].float(), h[at].detach().float())
        # drawn on the CPU, so a seed samples the same positions on every device
        picked = at & (torch.rand(at.shape, generator=generator) < options.logit_fraction).to(at.device)
        if not picked.any():  # a tiny batch: keep one position so that every step has token targets
            picked.view(-1)[at.view(-1).nonzero()[0]] = True
        logits = model.base.lm_head(g[picked]).float()  # (N, V)
        loss = loss + F.cross_entropy(logits, y[picked])
        if options.distill_weight:
            with torch.no_grad():
                teacher = F.log_softmax(model.base.lm_head(h[picked].detach()).float(), dim=-1)
            student = F.log_softmax(logits, dim=-1)
            loss = loss + options.distill_weight * F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return loss / options.unroll + lm_loss


CHAIN = 3  # draft positions the held-out evaluation measures


def agreement(model: RecycleGPT, sets: dict[str, list[Sequence]]) -> dict:
    """_agreement() per data set, and over all of them (weighted by tokens)."""
    per_set = {name: _agreement(model, seqs) for name, seqs in sets.items()}
    tokens = sum(f["tokens"] for f in per_set.values())
    overall = {key: sum(f[key] * f["tokens"] for f in per_set.values()) / tokens
               for key in ("top1_agreement", "cross_entropy", "chain_accepted")}
    overall["position_agreement"] = [sum(f["position_agreement"][k] * f["tokens"] for f in per_set.values()) / tokens
                                     for k in range(CHAIN)]
    return {**overall, "tokens": tokens, "sets": per_set}


def _default_features(model: RecycleGPT):
    """The module's states from the base's h (_module_states), in the form recycler_loss's and
    _agreement's `features` take."""
    return lambda seqs, x, h, mask, passes: _module_states(model, x, h, mask, passes)


@torch.no_grad()
def _agreement(model: RecycleGPT, seqs: list[Sequence], features=None) -> dict:
    """On answer positions: top-1 agreement of the module with the base's next token, and
    its cross-entropy there (over the whole vocabulary: what training lowers); per draft
    position k = 1..CHAIN of a chain (the module fed its own states, _module_states), the
    top-1 agreement; and chain_accepted, the drafts a greedy chain of CHAIN started at an
    answer position would have accepted on average (consecutive agreements, no gate).
    `features` as recycler_loss's."""
    agree = [0] * CHAIN
    total = accepted = chains = 0
    nll = 0.0
    for first in range(0, len(seqs), 8):
        chunk = seqs[first:first + 8]
        x, y, h, mask = _batch(chunk, model.cfg.dim, model.base.embed_tokens.weight.device)
        states = (features or _default_features(model))(chunk, x, h, mask, CHAIN)
        tokens = model.recycler.draft_tokens  # the top-1 is taken among these, as the graphs do
        for i, s in enumerate(chunk):
            answer = slice(s.prompt_len - 1, len(s.hidden))  # predictions of answer tokens
            target = y[i, answer]
            hits = []
            for k, g in enumerate(states):
                scores = model.base.lm_head(g[i, answer])  # (N, V)
                pred = scores.argmax(-1) if tokens is None else tokens[scores[:, tokens].argmax(-1)]
                hits.append(pred == target)  # (N,): position n agrees at draft position k + 1
                agree[k] += int(hits[-1].sum())
                if k == 0:
                    nll += float(F.cross_entropy(scores, target, reduction="sum"))
            total += len(target)
            for start in range(len(target)):  # draft k of the chain started at `start` sits at start + k
                n = 0
                while n < CHAIN and start + n < len(target) and hits[n][start + n]:
                    n += 1
                accepted += n
                chains += 1
    return {"top1_agreement": agree[0] / total, "cross_entropy": nll / total, "tokens": total,
            "position_agreement": [a / total for a in agree], "chain_accepted": accepted / chains}


class _Work:
    """The resumable work folder beside the output checkpoint. Data shards are kept as long
    as what shapes the answers (answer length, seed, generation dtype) is the same, and a
    shard's name carries a digest of its prompts, so changed prompt lists never reuse stale
    answers; the training state is resumed only when every training option is the same,
    and restarted otherwise."""

    DATA_OPTIONS = ("max_new_tokens", "seed", "generation_dtype", "answers_engine")

    def __init__(self, out: Path, options: TrainOptions):
        self.dir = out.with_name(out.name + ".work")
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {k: getattr(options, k) for k in self.DATA_OPTIONS}
        if options.answers_artifacts:  # the engine's precision, not the PyTorch dtype, shapes the answers
            data["generation_dtype"] = None
        else:
            del data["answers_engine"]  # as work folders written before engines could write answers
        marker = self.dir / "data.json"
        if marker.is_file() and json.loads(marker.read_text()) != data:
            raise CheckpointError(f"{self.dir} holds data generated with {json.loads(marker.read_text())}, "
                                  f"not {data}; delete it or use the same options")
        write_json(marker, data)
        # module_layers None (the checkpoint's) is left out, so work folders written before the
        # option existed still resume.
        self.fingerprint = {k: v for k, v in dataclasses.asdict(options).items()
                            if k not in ("threads", "checkpoint_every", "draft_vocab", "device")
                            and not (k == "module_layers" and v is None)}

    def shard(self, split: str, template_set: str, index: int, texts: list[str]) -> Path:
        digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]
        return self.dir / f"{split}-{template_set}-{index:03d}-{digest}.safetensors"

    @property
    def state(self) -> Path:
        return self.dir / "state.pt"

    def resumable_state(self) -> dict | None:
        if not self.state.is_file():
            return None
        state = torch.load(self.state, weights_only=True, map_location="cpu")
        if state.get("options") != self.fingerprint:
            log.info("training state in %s is for other options; starting training afresh", self.dir)
            return None
        return state


def _epoch_batches(train: list[Sequence], options: TrainOptions, epoch: int) -> list[list[int]]:
    """One epoch's batches of sequence indices, the same for a seed and epoch (so a resumed
    run takes the same steps): shuffled, then sorted by length within windows of 16
    batches' worth, cut into batches of at most batch_size rows and batch_positions
    positions (rows x longest), and the batches shuffled again."""
    rng = random.Random(options.seed + epoch)
    order = list(range(len(train)))
    rng.shuffle(order)
    window = 16 * options.batch_size
    batches: list[list[int]] = []
    for first in range(0, len(order), window):
        current: list[int] = []
        for i in sorted(order[first:first + window], key=lambda i: len(train[i].hidden)):
            rows, longest = len(current) + 1, len(train[i].hidden)  # sorted: the newest is the longest
            if current and (rows > options.batch_size or rows * longest > options.batch_positions):
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
    rng.shuffle(batches)
    return batches


def load_split(folder: Path, split: str) -> dict[str, list[Sequence]]:
    """The sequences of each data set of a split in a work folder, from the shards _Work.shard
    names split-set-index-digest ({} when there are none)."""
    sets: dict[str, list[Sequence]] = {}
    for path in sorted(Path(folder).glob(f"{split}-*.safetensors")):
        sets.setdefault(path.name[len(split) + 1:].rsplit("-", 2)[0], []).extend(load_sequences(path))
    return sets


def draft_vocabulary(seqs: list[Sequence], vocab_size: int, size: int) -> torch.Tensor | None:
    """The `size` tokens most frequent in the answers, sorted (None: the whole vocabulary).
    Ties go to the lower id, so the choice is deterministic."""
    if not size or size >= vocab_size:
        return None
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for s in seqs:
        counts += torch.bincount(s.tokens[s.prompt_len:], minlength=vocab_size)
    return torch.argsort(counts, descending=True, stable=True)[:size].sort().values


def _answer_writer(model: RecycleGPT, options: TrainOptions, probe: list[int]):
    """What writes the answers: a copy of the base in generation_dtype, or a Generator over
    the answers engine, checked to hold the same base: its greedy next token must agree
    with the PyTorch base's at 90% of a prompt's positions at least (a quantized engine of
    the same base agrees at ~95%, another model at chance).

    Raises: CheckpointError when the engine's base is not this checkpoint's."""
    if not options.answers_artifacts:
        return copy.deepcopy(model).to(GENERATION_DTYPES[options.generation_dtype])
    from runtime.evaluate import base_states
    from runtime.generator import Generator

    generator = Generator.from_artifacts(options.answers_artifacts, options.answers_engine, threads=1)
    engine_logits, _ = base_states(generator.backend, generator.dims, probe)
    with torch.no_grad():
        n, device = len(probe), model.base.embed_tokens.weight.device
        ours = model.base_step(torch.tensor([probe], device=device), torch.arange(n, device=device)[None],
                               torch.ones(1, n, dtype=torch.long, device=device),
                               model.empty_kv(model.cfg.n_layers), n).logits[0]
    agreement = float((ours.argmax(-1).cpu().numpy() == engine_logits.argmax(-1)).mean())
    if agreement < 0.9:
        raise CheckpointError(f"the answers engine ({options.answers_artifacts}, {options.answers_engine or 'exported graphs'}) "
                              f"agrees with this checkpoint's base on {agreement:.0%} of a prompt's next tokens: "
                              "it was not built from this base")
    log.info("answers engine agrees with the base on %.1f%% of the probe's next tokens", 100 * agreement)
    return generator


def _prompt_lists(split: str, options: TrainOptions) -> dict[str, list[list[dict]]]:
    """The conversations of each data set for a split; `real` as one set per kind."""
    lists = {}
    for name, count in options.data_sets():
        count = count if split == "train" else options.heldout_prompts
        if name == "real":
            per_kind = max(1, count // len(real_prompts.KINDS))
            for prompt in real_prompts.real_prompts(split, per_kind, options.seed):
                lists.setdefault(f"real-{prompt.kind}", []).append(prompt.chat())
        else:
            lists[name] = [[{"role": "user", "content": text}] for text in prompts(split, name, options.seed)[:count]]
    return lists


def _data(model, codec, stop_ids, split, options, work, progress) -> dict[str, list[Sequence]]:
    """The base's answers to each data set's prompts of a split."""
    lists = _prompt_lists(split, options)
    total, done = sum(len(chats) for chats in lists.values()), 0
    sets, writer = {}, None
    for name, chats in lists.items():
        sets[name] = []
        for index, first in enumerate(range(0, len(chats), SHARD)):
            chunk = chats[first:first + SHARD]
            path = work.shard(split, name, index, chunk)
            if not path.is_file():
                ids = [codec.encode_messages(chat) for chat in chunk]
                if writer is None:
                    writer = _answer_writer(model, options, ids[0])
                report = lambda n: progress(f"generating {split} answers", done + n, total)  # noqa: E731
                if options.answers_artifacts:
                    part = engine_sequences(writer, ids, options.max_new_tokens, stop_ids, report,
                                            workers=options.threads or os.cpu_count() or 1)
                else:
                    part = generate_sequences(writer, ids, options.max_new_tokens, stop_ids,
                                              max_positions=GENERATION_BATCH_POSITIONS, progress=report)
                save_sequences(part, path)
            sets[name].extend(load_sequences(path))
            done += len(chunk)
            progress(f"generating {split} answers", done, total)
    return sets


def train_recycler(model_path: Path, out: Path, options: TrainOptions = TrainOptions(),
                   progress: Callable[[str, int, int], None] = lambda stage, done, total: None) -> dict:
    """Train the recyclable module of the checkpoint at `model_path`; write the result to
    `out` (a checkpoint with recycler_trained true) and return the training report.

    Raises:
        CheckpointError, ConfigError: the checkpoint does not load, has no tokenizer or chat
            template, the work folder belongs to other options, or `out` holds files that
            are not an earlier checkpoint's (refused before any work).
    """
    check_output(Path(out))
    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    ckpt = load_checkpoint(model_path)
    if ckpt.tokenizer_json is None or not ckpt.generation.chat_template:
        raise CheckpointError(f"{model_path} needs a tokenizer.json and a chat template for self-distillation")
    codec = TextCodec.from_json(ckpt.tokenizer_json, ckpt.generation.chat_template, str(model_path))
    model, work = ckpt.model, _Work(Path(out), options)
    for p in model.base.parameters():
        p.requires_grad_(options.joint)
    torch.manual_seed(options.seed)
    layers = options.module_layers or model.cfg.recycle_layers
    if options.init == "checkpoint":
        if not ckpt.recycler_trained:
            raise CheckpointError(f"{model_path} has no trained recyclable module to go on from (init 'checkpoint')")
        if layers < model.cfg.recycle_layers:
            raise ConfigError(f"the module of {model_path} has {model.cfg.recycle_layers} layers: init 'checkpoint' "
                              f"can grow it but not cut it to {layers} (init 'base-layer' can)")
    elif layers > model.cfg.n_layers:
        raise ConfigError(f"init 'base-layer' copies the base's last {layers} layers, but it has {model.cfg.n_layers}")
    set_recycle_layers(model, layers)
    if options.init == "base-layer":
        init_recycler_from_base(model)
    model.to(options.device)
    heldout = _data(model, codec, ckpt.generation.eos_token_ids, "heldout", options, work, progress)
    train_sets = _data(model, codec, ckpt.generation.eos_token_ids, "train", options, work, progress)
    train = [s for seqs in train_sets.values() for s in seqs]
    data_seconds = time.perf_counter() - started

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    plans = [_epoch_batches(train, options, epoch) for epoch in range(options.epochs)]
    total = sum(len(plan) for plan in plans)
    step = 0
    state = work.resumable_state()
    if state is not None:
        model.load_state_dict(state["model"], strict=False)  # copies onto the model's device
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info("resuming training at step %d of %d", step, total)
    before = agreement(model, heldout) if step == 0 else None
    model.train()
    steps = [indices for plan in plans for indices in plan]
    while step < total:
        batch = [train[i] for i in steps[step]]
        lr = options.lr * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine to zero
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(torch.device(options.device).type, dtype=torch.bfloat16, enabled=options.bfloat16):
            loss = recycler_loss(model, batch, options, torch.Generator().manual_seed(options.seed * 1_000_003 + step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress(f"training (loss {loss.item():.3f})", step, total)
        if step % options.checkpoint_every == 0 or step == total:
            trainable = {k: v for k, v in model.state_dict().items() if options.joint or k.startswith("recycler.")}
            with atomic_path(work.state) as tmp:
                torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "step": step,
                            "options": work.fingerprint}, tmp)
    model.eval()
    tokens = draft_vocabulary(train, model.cfg.vocab_size, options.draft_vocab)
    model.recycler.set_draft_tokens(None if tokens is None else tokens.to(options.device))
    after = agreement(model, heldout)
    report = {
        "options": dataclasses.asdict(options),
        "data": {"source": "self-distillation: greedy answers of the base "
                           + (f"(ONNX Runtime engine {options.answers_engine or 'exported graphs'})"
                              if options.answers_artifacts else f"in {options.generation_dtype}")
                           + f" to the prompts of {', '.join(options.data)} (recycle_export/distill_data.py)",
                 "train_sequences": {name: len(seqs) for name, seqs in train_sets.items()},
                 "train_tokens": sum(len(s.hidden) for s in train),
                 "heldout_sequences": {name: len(seqs) for name, seqs in heldout.items()}},
        "heldout_before": before, "heldout_after": after,
        "seconds": {"data": round(data_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    # verify's answer store: the train split's answers, which the module was trained on too.
    answers = answer_store_tokens(s.tokens[s.prompt_len:].tolist() for s in train)
    report["answer_store"] = {"answers": len(train), "positions": len(answers)}
    save_checkpoint(Checkpoint(model.cpu(), True, ckpt.generation, ckpt.tokenizer_json, answers), Path(out))
    write_json(Path(out) / "training.json", report)
    return report
