"""Self-distillation data for the recyclable module: the base model's own answers.

Nothing is downloaded: prompts come from runtime/prompts.py (templates x topics written for
this project, with held-out topics) and recycle_export/real_prompts.py (real documents of
Debian packages), the answers are the base model's greedy generations, and the base's
final-normed hidden states h_j come for free from the same decoding pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from recycle_export.model import RecycleGPT
from runtime.files import atomic_path

log = logging.getLogger(__name__)

@dataclass
class Sequence:
    tokens: torch.Tensor  # (T + 1,) prompt + answer
    hidden: torch.Tensor  # (T, dim) float16: the base's h_j for every position but the last
    prompt_len: int


def length_batches(prompt_ids: list[list[int]], max_new_tokens: int, max_positions: int) -> list[list[int]]:
    """Indices of the prompts in batches of similar length, shortest first, each holding at
    most `max_positions` positions (rows x (longest prompt + max_new_tokens)); one row at
    least."""
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches: list[list[int]] = []
    for i in order:  # sorted, so the newest prompt is the batch's longest
        if batches and (len(batches[-1]) + 1) * (len(prompt_ids[i]) + max_new_tokens) <= max_positions:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def generate_sequences(model: RecycleGPT, prompt_ids: list[list[int]], max_new_tokens: int,
                       stop_ids: tuple[int, ...], max_positions: int = 4096,
                       progress: Callable[[int], None] = lambda n: None) -> list[Sequence]:
    """Greedy answers of the base for each prompt (in the prompts' order), with the hidden
    state of every position. Prompts are batched by length (length_batches) and left-padded
    per batch; a row stops at its first stop token (kept)."""
    out: dict[int, Sequence] = {}
    device = model.base.embed_tokens.weight.device
    for indices in length_batches(prompt_ids, max_new_tokens, max_positions):
        batch = [prompt_ids[i] for i in indices]
        b, longest = len(batch), max(len(p) for p in batch)
        pad = [longest - len(p) for p in batch]
        ids = torch.tensor([[0] * n + p for n, p in zip(pad, batch)], device=device)  # (B, P)
        mask = torch.tensor([[0] * n + [1] * len(p) for n, p in zip(pad, batch)], device=device)  # (B, P)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step = model.base_step(ids, positions, mask, model.empty_kv(model.cfg.n_layers, b))
        tokens, hidden = [ids], [step.hidden]
        done = torch.zeros(b, dtype=torch.bool)
        lengths = torch.full((b,), max_new_tokens)
        for i in range(max_new_tokens):
            nxt = step.logits[:, -1].argmax(-1)  # (B,)
            tokens.append(nxt[:, None])
            stopped = torch.tensor([int(t) in stop_ids for t in nxt.tolist()]) & ~done
            lengths[stopped] = i + 1
            done |= stopped
            if done.all() or i == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            step = model.base_step(nxt[:, None], positions, mask, step.present)
            hidden.append(step.hidden)
        tokens_all = torch.cat(tokens, dim=1).cpu()  # (B, P + n)
        hidden_all = torch.cat(hidden, dim=1).cpu()  # (B, P + n - 1, dim): the last token was not run
        for row, index in enumerate(indices):
            end = longest + int(lengths[row])
            # The last token was never run through the base: it is a target, without an h.
            out[index] = Sequence(tokens_all[row, pad[row]:end].clone(),
                                  hidden_all[row, pad[row]:end - 1].half().clone(), len(batch[row]))
        progress(len(out))
    return [out[i] for i in range(len(prompt_ids))]


def engine_sequences(generator, prompt_ids: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...],
                     progress: Callable[[int], None] = lambda n: None, workers: int = 1) -> list[Sequence]:
    """As generate_sequences, but the answers come from an ONNX Runtime engine of the same
    base (a runtime.generator.Generator): greedy verify with prompt-lookup drafts, whose
    tokens equal standard decoding's on a float engine, several times faster than PyTorch on
    a CPU; then one teacher-forced base call over prompt + answer gives h at every position
    and, where the answer stopped, the stop token the base chose (the runtime does not
    return it). A prompt the engine cannot take (too long for its cache) is left out.
    `workers` prompts run at once on threads (the Generator is thread-safe; give it one
    intra-op thread each: batch-1 decoding keeps one core busy, and spinning intra-op
    threads lose badly on a shared machine)."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime.errors import GenerationError
    from runtime.evaluate import base_states
    from runtime.request import Request

    request = Request("verify", max_new_tokens=max_new_tokens, stop_token_ids=stop_ids)

    def answer(ids: list[int]) -> Sequence | None:
        try:
            result = generator.generate(ids, request)
        except GenerationError as exc:
            log.warning("left out a prompt of %d tokens: %s", len(ids), exc)
            return None
        tokens = list(ids) + result.tokens
        logits, hidden = base_states(generator.backend, generator.dims, tokens, num_logits=1)
        if result.finish_reason == "stop":
            tokens.append(int(logits[-1].argmax()))  # greedy: the stop token itself
            assert tokens[-1] in stop_ids, "the engine's answer stopped on a token its base would not pick"
        else:
            hidden = hidden[:-1]  # the last token is a target only
        return Sequence(torch.tensor(tokens), torch.from_numpy(np.array(hidden)).half(), len(ids))

    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, sequence in enumerate(pool.map(answer, prompt_ids), 1):  # in order, progress on this thread
            if sequence is not None:
                out.append(sequence)
            progress(done)
    return out


def save_sequences(sequences: list[Sequence], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, s in enumerate(sequences):
        tensors[f"{i}.tokens"] = s.tokens.to(torch.int32)
        tensors[f"{i}.hidden"] = s.hidden
        tensors[f"{i}.prompt_len"] = torch.tensor([s.prompt_len], dtype=torch.int32)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def load_sequences(path: Path) -> list[Sequence]:
    from safetensors.torch import load_file

    tensors = load_file(path)
    count = len({k.split(".")[0] for k in tensors})
    return [Sequence(tensors[f"{i}.tokens"].long(), tensors[f"{i}.hidden"], int(tensors[f"{i}.prompt_len"][0]))
            for i in range(count)]
