"""Checkpoints: our directory format, Hugging Face directories of the supported families
(recycle_export.families), and safe loading.

Our format (a directory):
    config.json        ModelConfig fields plus "format", "format_version", "recycler_trained"
    base.safetensors   the base model (Hugging Face names without the `model.` prefix)
    recycler.safetensors  the recyclable module
    tokenizer.json     optional, the `tokenizers` library's format
    generation.json    optional: bos/eos/pad token ids and the chat template
    answers.npy        optional: verify's answer store, the model's own answers (runtime.drafts)

A Hugging Face directory (config.json + *.safetensors, sharded or not) loads too; a fresh recyclable
module is attached, with a warning. Pickled weights are never unpickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recycle_export.config import ModelConfig
from recycle_export.families import config_from_hf, unfuse
from recycle_export.model import RecycleGPT
from runtime.artifacts import GenerationRecord
from runtime.drafts import ANSWER_STORE, read_answer_store, write_answer_store
from runtime.errors import ArtifactError, CheckpointError, ConfigError
from runtime.files import (atomic_path, check_output_folder, clean_stale_staging, read_json, read_record,
                           read_text, staged_folder, write_json, write_text)
from runtime.tokenizer import TextCodec, compile_chat_template
from runtime.records import Fields

log = logging.getLogger(__name__)

FORMAT = "recycle-export-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG = "config.json"
# Every file a checkpoint of ours may hold (training.json: train-recycler's report).
CHECKPOINT_FILES = frozenset({CONFIG, "base.safetensors", "recycler.safetensors", "generation.json",
                              "tokenizer.json", "training.json", ANSWER_STORE})


@dataclass
class Checkpoint:
    model: RecycleGPT
    recycler_trained: bool
    generation: GenerationRecord = field(default_factory=GenerationRecord)
    tokenizer_json: str | None = None  # the tokenizer file's text
    answers: np.ndarray | None = None  # verify's answer store (runtime.drafts.answer_store_tokens)

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def new_model(cfg: ModelConfig, seed: int = 0) -> RecycleGPT:
    """A randomly initialised model (LLaMA's init: normal(0, 0.02) linears and embeddings)."""
    gen = torch.Generator().manual_seed(seed)
    model = RecycleGPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def checkpoint_files(folder: Path) -> set[str] | None:
    """The files a checkpoint of ours in `folder` may hold, or None when it holds none
    (runtime.files.staged_folder's `owned`)."""
    return set(CHECKPOINT_FILES) if _is_our_checkpoint(Path(folder)) else None


def check_output(out: Path) -> None:
    """Refuse early (before an import or a training run) an output folder that
    save_checkpoint would refuse.

    Raises:
        CheckpointError: `out` is a file, or holds files that are not an earlier checkpoint's.
    """
    clean_stale_staging(Path(out), CONFIG)
    try:
        check_output_folder(Path(out), CONFIG, checkpoint_files)
    except ArtifactError as exc:
        raise CheckpointError(str(exc)) from None


def save_checkpoint(ckpt: Checkpoint, out: Path) -> None:
    """Write `ckpt` to the directory `out` atomically: staged in a hidden sibling, then
    renamed in; an earlier checkpoint's files are replaced and every other file in `out`
    is left alone (runtime.files.staged_folder).

    Raises:
        CheckpointError: `out` is a file, or holds files that are not an earlier checkpoint's.
    """
    out = Path(out)
    check_output(out)
    model = ckpt.model
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "recycler_trained": ckpt.recycler_trained, **model.cfg.to_dict()}
    base = {k: v.contiguous() for k, v in model.base.state_dict().items()}
    if model.cfg.tie_embeddings:
        del base["lm_head.weight"]  # the same tensor as embed_tokens.weight
    with staged_folder(out, CONFIG, checkpoint_files) as tmp:
        write_json(tmp / "config.json", config)
        save_file(base, tmp / "base.safetensors")
        save_file({k: v.contiguous() for k, v in model.recycler.state_dict().items()},
                  tmp / "recycler.safetensors")
        write_json(tmp / "generation.json", ckpt.generation.to_json())
        if ckpt.tokenizer_json is not None:
            write_text(tmp / "tokenizer.json", ckpt.tokenizer_json)
        if ckpt.answers is not None:
            write_answer_store(tmp / ANSWER_STORE, ckpt.answers)


def _is_our_checkpoint(path: Path) -> bool:
    return read_record(path / CONFIG, FORMAT) is not None


def load_checkpoint(path: Path) -> Checkpoint:
    """Load our checkpoint format or a Hugging Face directory of a supported family.

    Raises:
        CheckpointError: the path is missing, holds pickled weights, or a tensor is missing,
            unexpected, mis-shaped, of a wrong dtype, or its file is truncated.
        ConfigError: config.json has an invalid or unsupported value.
    """
    path = _checkpoint_dir(path)
    if _is_our_checkpoint(path):
        return _load_ours(path)
    return _load_hf(path)


def load_config(path: Path) -> ModelConfig:
    """A checkpoint's model config, checked against the tensors its files declare (their
    headers), with no weight read: for checks that must come before the weights load.

    Raises: CheckpointError, ConfigError as load_checkpoint does for the config and shapes."""
    path = _checkpoint_dir(path)
    raw = _read_json(path / CONFIG, CONFIG)
    if not _is_our_checkpoint(path):
        cfg = config_from_hf(raw, str(path / CONFIG))
        files = sorted(path.glob("*.safetensors"))
        if files:
            check_sizes(cfg, _hf_shapes(files, cfg), None, str(path))
        return cfg
    for key in ("format", "format_version", "recycler_trained"):
        raw.pop(key, None)
    cfg = ModelConfig.from_dict(raw, source=str(path / CONFIG))
    files = {part: path / f"{part}.safetensors" for part in ("base", "recycler")}
    if all(f.is_file() for f in files.values()):
        check_sizes(cfg, _header_shapes([files["base"]]), _header_shapes([files["recycler"]]), str(path))
    return cfg


def _checkpoint_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(_pickle_message(path))
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} not found (expected a directory with config.json)")
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    return path


def _pickle_message(path: Path) -> str:
    return (f"{path} holds pickled weights, which can run arbitrary code when loaded, so they "
            "are never unpickled. Convert them once, in an environment you trust: python -c "
            "\"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{path.name}', weights_only=True), 'model.safetensors')\"")


def _read_json(path: Path, what: str) -> dict:
    data = read_json(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: cannot read safetensors file, truncated or corrupt ({exc})") from None
    return tensors


def _expected(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    expected = dict(module.state_dict())
    if getattr(module, "lm_head", None) is not None and module.lm_head.weight is module.embed_tokens.weight:
        expected.pop("lm_head.weight")
    return expected


def check_shapes(expected: dict[str, tuple], found: dict[str, tuple], source: str,
                 optional: set[str] = frozenset()) -> None:
    """Refuse tensors `found` (name -> shape) that do not match `expected`: one missing,
    unexpected or of another shape.

    Raises:
        CheckpointError: naming the first such tensor.
    """
    missing = sorted(set(expected) - set(found) - optional)
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r} (expected shape "
                              f"{tuple(expected[missing[0]])})"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r} with shape "
                              f"{tuple(found[unexpected[0]])}, not part of the model")
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(found[name])}, "
                                  f"expected {tuple(shape)}")


def layer_count(names, prefix: str = "layers.") -> int:
    """1 + the highest layer index among tensor names `prefix{i}.…` (0 when none)."""
    indices = [int(part) for name in names if name.startswith(prefix)
               for part in [name[len(prefix):].split(".", 1)[0]] if part.isdigit()]
    return max(indices) + 1 if indices else 0


def check_sizes(cfg: ModelConfig, base: dict[str, tuple], recycler: dict[str, tuple] | None,
                source: str) -> None:
    """Check a config against the tensors a checkpoint holds (name -> shape, read from the
    files' headers) before the model is allocated: a vocab_size or n_layers typed wrong
    must not cost terabytes first.

    Raises:
        CheckpointError: the layer counts differ, or a tensor is missing, unexpected or of
            another shape than the config implies.
    """
    for what, found, key, count in (("base", base, "n_layers", cfg.n_layers),
                                    ("recycler", recycler, "recycle_layers", cfg.recycle_layers)):
        if found is not None and layer_count(found) != count:
            raise CheckpointError(f"{source}: config field {key!r} is {count}, but the {what} weights hold "
                                  f"{layer_count(found)} layers")
    with torch.device("meta"):  # shapes only: nothing is allocated
        meta = RecycleGPT(cfg)
    check_shapes({k: v.shape for k, v in _expected(meta.base).items()}, base, source)
    if recycler is not None:
        module = {k: v for k, v in recycler.items() if k != "draft_tokens"}  # checked when set
        check_shapes({k: v.shape for k, v in _expected(meta.recycler).items()}, module, source)


def _header_shapes(files: list[Path]) -> dict[str, tuple]:
    """name -> shape of every tensor in safetensors files, from their headers alone."""
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: cannot read safetensors file, truncated or corrupt ({exc})") from None
    return shapes


def _hf_names(items: dict, cfg: ModelConfig, split) -> dict:
    """A Hugging Face directory's tensors (or shapes) under our Base names: no `model.`
    prefix, fused projections split with `split` (families.unfuse), no saved rotary buffers
    (recomputed from the config)."""
    items = {name.removeprefix("model."): item for name, item in items.items()
             if not name.endswith("rotary_emb.inv_freq")}
    return unfuse(items, cfg, split)


def _check_fused(rows: int, sizes: list[int], name: str) -> None:
    if rows != sum(sizes):
        raise CheckpointError(f"fused tensor {name!r} has {rows} rows, expected {' + '.join(map(str, sizes))} "
                              "from the config")


def _split_shape(shape: tuple, sizes: list[int], name: str) -> list[tuple]:
    _check_fused(shape[0], sizes, name)
    return [(size, *shape[1:]) for size in sizes]


def _split_tensor(tensor: torch.Tensor, sizes: list[int], name: str) -> list[torch.Tensor]:
    _check_fused(tensor.shape[0], sizes, name)
    return [part.contiguous() for part in torch.split(tensor, sizes)]


def _hf_shapes(files: list[Path], cfg: ModelConfig) -> dict[str, tuple]:
    return _hf_names(_header_shapes(files), cfg, _split_shape)


def assign_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str,
            optional: set[str] = frozenset()) -> None:
    """Copy `tensors` into `module`, refusing anything missing, unexpected or mis-shaped."""
    expected = _expected(module)
    check_shapes({k: v.shape for k, v in expected.items()}, {k: v.shape for k, v in tensors.items()},
                 source, optional)
    for name, target in expected.items():
        if name not in tensors:
            continue
        value = tensors[name]
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {value.dtype}, "
                                  "expected a floating-point dtype")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


def _load_ours(path: Path) -> Checkpoint:
    raw = _read_json(path / "config.json", "config.json")
    version = raw.pop("format_version", None)
    raw.pop("format")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this toolkit reads "
                              f"version {FORMAT_VERSION}; re-create it with this version")
    trained = raw.pop("recycler_trained", False)
    if not isinstance(trained, bool):
        raise ConfigError(f"{path / CONFIG}: config field 'recycler_trained' must be true or false, got {trained!r}")
    cfg = ModelConfig.from_dict(raw, source=str(path / "config.json"))
    files = {part: path / f"{part}.safetensors" for part in ("base", "recycler")}
    for file in files.values():
        if not file.is_file():
            raise CheckpointError(f"{path}: missing {file.name}")
    check_sizes(cfg, _header_shapes([files["base"]]), _header_shapes([files["recycler"]]), str(path))
    model = RecycleGPT(cfg).eval()
    for part, module in (("base", model.base), ("recycler", model.recycler)):
        file = files[part]
        (_assign_recycler if part == "recycler" else assign_tensors)(module, _read_tensors([file]), str(file))
    generation = GenerationRecord()
    if (path / "generation.json").is_file():
        generation = GenerationRecord.from_json(Fields(_read_json(path / "generation.json", "generation.json"),
                                                       str(path / "generation.json"), "fix or remove the file",
                                                       error=CheckpointError))
    tokenizer = _read_tokenizer(path, cfg, generation)
    if not trained:
        log.warning("the recyclable module of %s was never trained: alternate will produce poor "
                    "text and verify will accept few drafts", path)
    store = path / ANSWER_STORE
    answers = read_answer_store(store, cfg.vocab_size, CheckpointError) if store.is_file() else None
    return Checkpoint(model, bool(trained), generation, tokenizer, answers)


def attach_recycler(ckpt: Checkpoint, file: Path) -> None:
    """Load a trained recyclable module (a safetensors file of Recycler weights) into ckpt.

    Raises:
        CheckpointError: the file is missing or truncated, or does not fit this model.
    """
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"recyclable module {file} not found")
    _assign_recycler(ckpt.model.recycler, _read_tensors([file]), str(file))
    ckpt.recycler_trained = True


def _assign_recycler(recycler: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """assign_tensors for the module, whose integer `draft_tokens` tensor is optional."""
    draft_tokens = tensors.pop("draft_tokens", None)
    recycler.set_draft_tokens(None)
    assign_tensors(recycler, tensors, source)
    try:
        recycler.set_draft_tokens(draft_tokens, source)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def save_recycler(model: RecycleGPT, file: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the recyclable module alone (float16 by default: a few MB for a small model)."""
    with atomic_path(file) as tmp:
        save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                   for k, v in model.recycler.state_dict().items()}, tmp)


def _load_hf(path: Path) -> Checkpoint:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(_pickle_message(pickled[0]))
        raise CheckpointError(f"{path}: no *.safetensors weights found")
    hf = _read_json(path / "config.json", "config.json")
    cfg = config_from_hf(hf, str(path / "config.json"))
    check_sizes(cfg, _hf_shapes(files, cfg), None, str(path))
    model = RecycleGPT(cfg).eval()
    assign_tensors(model.base, _hf_names(_read_tensors(files), cfg, _split_tensor), str(path))
    log.warning("%s has no recyclable module: attaching a freshly initialised one "
                "(train it with `cli.py train-recycler`)", path)
    fresh = new_model(cfg)
    model.recycler.load_state_dict(fresh.recycler.state_dict())
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    template = None
    if (path / "tokenizer_config.json").is_file():
        template = _read_json(path / "tokenizer_config.json", "tokenizer_config.json").get("chat_template")
    generation = GenerationRecord(hf.get("bos_token_id"), eos_ids, hf.get("pad_token_id"), template)
    tokenizer = _read_tokenizer(path, cfg, generation)
    return Checkpoint(model, False, generation, tokenizer)


def _read_tokenizer(path: Path, cfg: ModelConfig, generation: GenerationRecord) -> str | None:
    """tokenizer.json's text (None without one), parsed once and the chat template compiled,
    so that a corrupt file is refused when the checkpoint loads, not by a later command."""
    file = path / "tokenizer.json"
    if not file.is_file():
        compile_chat_template(generation.chat_template, str(path), CheckpointError)
        return None
    text = read_text(file, CheckpointError)
    TextCodec.from_json(text, generation.chat_template, str(path), cfg.vocab_size, CheckpointError)
    return text
