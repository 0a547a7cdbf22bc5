"""recycle-export command line: thin commands over the library (docs/design.md section 7).

Heavy imports live inside the commands so that `--help` is instant. User errors
(RecycleExportError) print as one `Error: ...` line with exit status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from runtime.errors import RecycleExportError
from runtime.prompts import TEMPLATE_SETS
from runtime.request import MAX_DRAFT, STRATEGIES, DraftOptions, Request


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RecycleExportError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Export RecycleGPT models to ONNX, build engines, and decode with them."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")


@main.command("import-gguf")
@click.option("--gguf", "gguf_path", required=True, type=click.Path(dir_okay=False),
              help="A GGUF file of architecture llama, qwen2, qwen3 or phi3.")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--recycler", "recycler_path", type=click.Path(dir_okay=False),
              help="A trained recyclable module (safetensors) to attach instead of a fresh one.")
@click.option("--answers", "answers_path", type=click.Path(dir_okay=False),
              help="verify's answer store (.npy) to attach: the model's own answers that its module "
                   "was trained on (train-recycler --answers-out).")
def import_gguf_cmd(gguf_path: str, out: str, recycler_path: str | None, answers_path: str | None) -> None:
    """Convert a GGUF file into a checkpoint (weights dequantized to float32)."""
    from tqdm import tqdm

    from recycle_export.checkpoint import check_output, save_checkpoint
    from recycle_export.gguf_import import import_gguf

    check_output(out)  # before the import, not after it
    with tqdm(desc="dequantizing", unit="tensor", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        ckpt = import_gguf(gguf_path, progress, recycler_path, answers_path)
    save_checkpoint(ckpt, out)
    cfg = ckpt.config
    click.echo(f"wrote {out}: {cfg.n_layers} layers, dim {cfg.dim}, vocab {cfg.vocab_size}, "
               f"{sum(p.numel() for p in ckpt.model.base.parameters()) / 1e6:.1f}M base parameters")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="Checkpoint directory.")
@click.option("--out", required=True, type=click.Path(), help="Artifact directory to write.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (14..20).")
@click.option("--max-seq-len", type=int, default=None, help="Override the checkpoint's maximum sequence length.")
def export(model_path, out, dtype, opset, max_seq_len) -> None:
    """Export full_step.onnx and recycle_step.onnx, then validate them against PyTorch."""
    import time

    from tqdm import tqdm

    from recycle_export.export import ExportOptions, export as run_export

    options = ExportOptions(dtype=dtype, opset=opset, max_seq_len=max_seq_len)
    start = time.perf_counter()
    with tqdm(total=4, desc="export", bar_format="{desc}: {n}/{total} {elapsed}", disable=None) as bar:
        def progress(stage: str) -> None:
            bar.set_description(stage)
            bar.update(1)

        manifest = run_export(model_path, out, options, progress)
    click.echo(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    _echo_validation(manifest.validation)


def _echo_validation(validation: dict) -> None:
    tol = validation["tolerance"]
    click.echo(f"validation ({tol['dtype']}, tolerance {tol['relative_to_max_abs_reference']:g} "
               f"x max(1, max |reference|)): {'passed' if validation['passed'] else 'FAILED'}")
    for graph, outputs in validation["max_abs_diff"].items():
        kv = [v for k, v in outputs.items() if k.startswith("present.")]
        main_outputs = {k: v for k, v in outputs.items() if not k.startswith("present.")}
        figures = ", ".join(f"{k} {v:.2e}" for k, v in main_outputs.items())
        click.echo(f"  {graph}: {figures}, KV (max of {len(kv)}) {max(kv):.2e}")


@main.command()
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--model", "model_path", type=click.Path(),
              help="Checkpoint to compare with (default: the one the artifacts were exported from).")
def validate(artifacts, model_path) -> None:
    """Run both graphs under ONNX Runtime against the PyTorch model; record the figures."""
    from recycle_export.validate import validate_artifacts

    _echo_validation(validate_artifacts(artifacts, model_path).validation)


@main.command()
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
def inspect(artifacts) -> None:
    """Print the graphs' inputs and outputs, the KV description and the validation figures."""
    from recycle_export.describe import describe

    click.echo(describe(artifacts))


@main.command()
@click.option("--artifacts", type=click.Path(file_okay=False), help="Export directory.")
@click.option("--target", help="Build target (see --list-targets).")
@click.option("--precision", default=None, help="Precision (default: the target's first).")
@click.option("--list-targets", is_flag=True, help="Show the targets and what each needs, then exit.")
@click.option("--max-batch", type=int, default=1, show_default=True, help="TensorRT: the largest batch profiled.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT: timing cache file reused across builds (default: ~/.cache/recycle-export/).")
def build(artifacts, target, precision, list_targets, max_batch, timing_cache) -> None:
    """Build an engine for a target: engines/<target>-<precision>/ under the artifacts."""
    from engines.targets import describe_targets

    if list_targets:
        click.echo(describe_targets())
        return
    if not artifacts or not target:
        raise click.UsageError("give --artifacts DIR and --target TARGET (or --list-targets)")
    import time

    from tqdm import tqdm

    from engines.build import build as run_build
    from runtime.engines import engine_dir
    from engines.targets import TARGETS

    options = {}
    if TARGETS.get(target) is not None and TARGETS[target].backend == "tensorrt":
        options = {"max_batch": max_batch, "timing_cache": timing_cache}
    start = time.perf_counter()
    with tqdm(total=3, desc="build", bar_format="{desc}: {n}/{total} {elapsed}", disable=None) as bar:
        def progress(stage: str) -> None:
            bar.set_description(stage)
            bar.update(1)

        record = run_build(artifacts, target, precision, progress, **options)
    folder = engine_dir(artifacts, f"{record.target}-{record.precision}")
    click.echo(f"wrote {folder} ({record.backend} {record.backend_version}) in {time.perf_counter() - start:.1f}s")
    for graph, figures in (record.accuracy or {}).items():
        if isinstance(figures, dict):
            click.echo(f"  {graph}: max |logit diff| {figures['max_abs_logit_diff']:.3f}, "
                       f"next-token agreement {figures['next_token_agreement']:.3f} vs the float graphs")


@main.command("train-recycler")
@click.option("--model", "model_path", required=True, type=click.Path(), help="Checkpoint (with tokenizer and chat template).")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint to write, trained module attached.")
@click.option("--module-out", type=click.Path(dir_okay=False), help="Also write the module alone, float16 safetensors.")
@click.option("--answers-out", type=click.Path(dir_okay=False),
              help="Also write verify's answer store alone (.npy): the training answers, for import-gguf --answers.")
@click.option("--data", "data_sets", multiple=True, metavar="NAME[=N]",
              help="A data set to train on, with its number of training prompts (default: --train-prompts); "
                   "repeat for several. NAME: instructions, requests (runtime/prompts.py) or real (real documents "
                   "of Debian packages, six kinds, N split evenly over them; recycle_export/real_prompts.py). "
                   "Default: instructions and requests.")
@click.option("--train-prompts", type=int, default=512, show_default=True,
              help="Training prompts from each data set that names no count (all of a smaller set).")
@click.option("--heldout-prompts", type=int, default=48, show_default=True,
              help="Held-out prompts (topics or documents never trained on) from each data set.")
@click.option("--max-new-tokens", type=int, default=160, show_default=True, help="Answer length per prompt.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--distill-weight", type=float, default=1.0, show_default=True,
              help="Weight of KL(base || module) added to the cross-entropy.")
@click.option("--feature-weight", type=float, default=0.0, show_default=True,
              help="Weight of the smooth-L1 regression of the module's g_j onto the base's h_j.")
@click.option("--logit-fraction", type=float, default=0.25, show_default=True,
              help="Share of positions per step whose tokens go through the LM head (cross-entropy, KL).")
@click.option("--joint", is_flag=True, help="Train the base too (L = L_lm + L_rec).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--generation-dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16",
              show_default=True, help="The base's dtype while it writes the training answers.")
@click.option("--float32", "float32_steps", is_flag=True, help="Train in float32 (default: bfloat16 autocast).")
@click.option("--init", type=click.Choice(["base-layer", "checkpoint"]), default="base-layer", show_default=True,
              help="Start the module from the base's last layer, or go on from the checkpoint's trained module.")
@click.option("--module-layers", type=int, default=None,
              help="Decoder layers of the module (default: the checkpoint's). With --init checkpoint, more than "
                   "it has grows the module: each added layer starts as a copy of the last that passes its input "
                   "through; with --init base-layer, the base's last N layers.")
@click.option("--draft-vocab", type=int, default=8192, show_default=True,
              help="The module's LM head scores only the K tokens most frequent in the training answers "
                   "(FR-Spec); 0: the whole vocabulary.")
@click.option("--unroll", type=int, default=1, show_default=True,
              help="Draft positions trained at each position: 1 the first draft only; 2-3 also the module fed "
                   "its own states, as chained drafts run (EAGLE-3's training-time test).")
@click.option("--batch-positions", type=int, default=8192, show_default=True,
              help="At most this many positions (rows x longest sequence) per training step.")
@click.option("--answers-artifacts", type=click.Path(file_okay=False),
              help="Write the training answers with this export of the same base (ONNX Runtime) instead of "
                   "PyTorch: several times faster on a CPU (needs the onnxruntime extra).")
@click.option("--answers-engine", help="With --answers-artifacts: an engine built under it, e.g. cpu-fp32 "
                                       "(default: the exported graphs).")
@click.option("--device", default="cpu", show_default=True,
              help="Where PyTorch trains (and writes answers without --answers-artifacts): cpu, cuda or cuda:N. "
                   "The work folder is the same, so a run resumes on either.")
@click.option("--threads", type=int, default=None)
def train_recycler_cmd(model_path, out, module_out, answers_out, data_sets, train_prompts, heldout_prompts, max_new_tokens, epochs,
                       batch_size, lr, distill_weight, feature_weight, logit_fraction, joint, seed, generation_dtype,
                       float32_steps, init, module_layers, draft_vocab, unroll, batch_positions, answers_artifacts,
                       answers_engine, device, threads) -> None:
    """Train the recyclable module on the base's own answers (resumes an interrupted run)."""
    from tqdm import tqdm

    from recycle_export.checkpoint import load_checkpoint, save_recycler
    from recycle_export.train import TrainOptions, train_recycler
    from runtime.drafts import write_answer_store

    options = TrainOptions(train_prompts, heldout_prompts, max_new_tokens, epochs, batch_size, lr,
                           distill_weight, feature_weight, logit_fraction, joint, seed, threads=threads,
                           generation_dtype=generation_dtype, bfloat16=not float32_steps, init=init,
                           module_layers=module_layers, draft_vocab=draft_vocab, unroll=unroll,
                           batch_positions=batch_positions,
                           answers_artifacts=answers_artifacts, answers_engine=answers_engine, device=device,
                           **({"data": data_sets} if data_sets else {}))
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        key = stage.split(" (")[0]
        bar = bars.get(key)
        if bar is None:
            bar = bars[key] = tqdm(total=total, desc=key, disable=None)
        bar.set_postfix_str(stage[len(key):].strip(" ()"))
        bar.update(done - bar.n)

    report = train_recycler(model_path, out, options, progress)
    for bar in bars.values():
        bar.close()
    before, after = report["heldout_before"], report["heldout_after"]
    if before:
        click.echo(f"held-out top-1 agreement before training: {before['top1_agreement']:.3f}")
    click.echo(f"held-out top-1 agreement: {after['top1_agreement']:.3f} (cross-entropy {after['cross_entropy']:.3f}, "
               f"{after['tokens']} answer tokens); took {report['seconds']['total']:.0f}s")
    click.echo("  per data set: " + ", ".join(f"{name} {figures['top1_agreement']:.3f}"
                                               for name, figures in after["sets"].items()))
    click.echo("  per draft position of a chain: " + ", ".join(f"{a:.3f}" for a in after["position_agreement"])
               + f"; a chain of {len(after['position_agreement'])} accepts {after['chain_accepted']:.2f} drafts")
    if module_out or answers_out:
        trained = load_checkpoint(out)
        if module_out:
            save_recycler(trained.model, module_out)
            click.echo(f"wrote {module_out}")
        if answers_out:
            write_answer_store(Path(answers_out), trained.answers)
            click.echo(f"wrote {answers_out}: an answer store of {report['answer_store']['answers']} answers")


def schedule_options(command):
    """verify's draft options (runtime.request.DraftOptions) and alternate's confidence gate,
    shared by generate and bench."""
    defaults = DraftOptions()
    for option in reversed((
            click.option("--min-confidence", type=float, default=0.0, show_default=True,
                         help="alternate: emit the module's token only at this top probability or more "
                              "(0: always, the paper's schedule; 1: never, standard)."),
            click.option("--max-draft", type=int, default=defaults.max_draft, show_default=True,
                         help=f"verify: drafted tokens per base step (1..{MAX_DRAFT})."),
            click.option("--lookup-ngram", type=int, default=defaults.lookup_ngram, show_default=True,
                         help="verify: draft by prompt lookup when a suffix of N tokens or more occurred "
                              "before; the draft is as long as the longest such suffix (0: off)."),
            click.option("--answer-store/--no-answer-store", default=defaults.answer_store, show_default=True,
                         help="verify: where lookup finds nothing, draft from the model's store of its own "
                              "answers (exports that have one)."),
            click.option("--module-drafts/--no-module-drafts", default=defaults.module, show_default=True,
                         help="verify: draft with the recyclable module when lookup and the store find nothing."),
            click.option("--min-draft-probability", type=float, default=defaults.min_probability,
                         show_default=True, help="verify: end a module chain below this top probability."))):
        command = option(command)
    return command


def _schedule(max_draft, lookup_ngram, answer_store, module_drafts, min_draft_probability, min_confidence) -> dict:
    """Request fields from schedule_options."""
    return {"drafts": DraftOptions(max_draft, lookup_ngram, module_drafts, min_draft_probability, answer_store),
            "min_confidence": min_confidence}


@main.command()
@click.option("--artifacts", type=click.Path(file_okay=False), help="Export directory: decode with the runtime.")
@click.option("--model", "model_path", type=click.Path(), help="Checkpoint: decode with the PyTorch reference.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="standard",
              show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 switches it off.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", "stop_strings", multiple=True, help="Stop string (repeatable; runtime only).")
@click.option("--stream", is_flag=True, help="Print text as it is generated (runtime only).")
@click.option("--engine", default=None, help="An engine built under the artifacts (`cli.py build`), e.g. cpu-int4; default: the exported graphs on the CPU.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (runtime; default: all cores).")
@schedule_options
def generate(artifacts, model_path, prompt, chat, strategy, max_new_tokens, temperature, top_k, top_p,
             seed, stop_strings, stream, engine, threads, **schedule) -> None:
    """Generate text from a prompt with the runtime (--artifacts) or the reference (--model)."""
    from runtime.sampling import SamplingParams

    if (artifacts is None) == (model_path is None):
        raise click.UsageError("give exactly one of --artifacts DIR (runtime) or --model CKPT (reference)")
    sampling = SamplingParams(temperature, top_k, top_p, seed)
    schedule = _schedule(**schedule)
    if model_path is not None:
        if stop_strings or stream or engine or threads is not None:
            from runtime.errors import GenerationError

            raise GenerationError("--stop, --stream, --engine and --threads apply to the runtime (--artifacts) only")
        _generate_reference(model_path, prompt, chat, Request(strategy, sampling, max_new_tokens, **schedule))
        return
    from runtime.generator import Generator

    request = Request(strategy, sampling, max_new_tokens, stop_strings=tuple(stop_strings), **schedule)
    generator = Generator.from_artifacts(artifacts, engine, threads)
    ids = generator.encode(prompt, chat=chat)
    run = generator.stream(ids, request)
    if stream:
        from runtime.tokenizer import TextDelta

        delta = TextDelta(generator.codec, request.stop_strings)
        for token in run:
            click.echo(delta.add(token), nl=False)
        result = run.result()
        click.echo(delta.rest(result.text))
    else:
        result = run.result()
        click.echo(result.text)
    st = result.stats
    decode = "-" if st.decode_tokens_per_s is None else f"{st.decode_tokens_per_s:.1f}"
    click.echo(f"[{strategy}] {st.generated_tokens} tokens, finish: {result.finish_reason}, "
               f"prefill {st.prefill_tokens_per_s:.0f} tok/s, decode {decode} tok/s, "
               f"{_calls(st)}", err=True)


def _calls(st) -> str:
    from runtime.bench import by_position

    text = f"base calls {st.base_calls}, module calls {st.module_calls}"
    if st.drafts_proposed:
        text += (f", drafts accepted {st.drafts_accepted}/{st.drafts_proposed} (lookup "
                 f"{st.lookup_accepted}/{st.lookup_proposed}, store {st.store_accepted}/{st.store_proposed}; "
                 f"by draft position {by_position(st.acceptance_at)}), "
                 f"{st.tokens_per_base_call:.2f} tokens per base call")
    return text


def _generate_reference(model_path, prompt, chat, request) -> None:
    from recycle_export.checkpoint import load_checkpoint
    from recycle_export.reference import ReferenceDecoder
    from runtime.drafts import AnswerStore
    from runtime.tokenizer import TextCodec

    ckpt = load_checkpoint(model_path)
    codec = TextCodec.from_json(ckpt.tokenizer_json, ckpt.generation.chat_template, source=model_path)
    ids = codec.encode(prompt, chat=chat)
    store = AnswerStore(ckpt.answers) if ckpt.answers is not None else None
    result = ReferenceDecoder(ckpt.model, ckpt.generation.eos_token_ids, store).generate(ids, request)
    click.echo(codec.decode(result.tokens))
    click.echo(f"[{request.strategy}, PyTorch reference] {len(result.tokens)} tokens, finish: {result.finish_reason}, "
               f"{_calls(result.stats)}", err=True)


def _task_set_options(command):
    """--task-set, --kinds and --per-kind, shared by bench and eval."""
    command = click.option("--per-kind", type=int, default=None,
                           help="With --task-set: the first N prompts of each kind (default: all).")(command)
    command = click.option("--kinds", default=None,
                           help="With --task-set: comma-separated kinds, e.g. chat,translation "
                                "(default: every kind in the set).")(command)
    return click.option("--task-set", default=None,
                        help="Prompts from a task set: `real` (benchmarks/tasks/real_tasks.jsonl) or a JSONL path; "
                             "figures per kind and overall.")(command)


def _task_prompts(generator, task_set: str, kinds: str | None, per_kind: int | None,
                  max_new_tokens: int) -> tuple[list[list[int]], list[str]]:
    """The task set's prompts and the kind of each; a note on stderr names those skipped."""
    from runtime.tasks import encode_task_set, parse_kinds

    encoded = encode_task_set(generator, task_set, parse_kinds(kinds), per_kind, max_new_tokens)
    if encoded.skipped:
        click.echo(f"note: skipped {len(encoded.skipped)} prompt(s) longer than {encoded.room} tokens (max_seq_len "
                   f"{generator.capacity} - {max_new_tokens} new tokens): "
                   f"{', '.join(t.id for t in encoded.skipped)}", err=True)
    return encoded.prompts, encoded.kinds


@main.command()
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--strategies", default=",".join(STRATEGIES), show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable; default: four built-in chat prompts).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--engine", default=None, help="An engine built under the artifacts (`cli.py build`), e.g. cpu-int4; default: the exported graphs on the CPU.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default="bench.json", show_default=True)
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), default="bench.png", show_default=True)
@_task_set_options
@schedule_options
def bench(artifacts, strategies, prompts, max_new_tokens, repeats, warmup, engine, threads, json_path,
          chart_path, task_set, kinds, per_kind, **schedule) -> None:
    """Run the strategies side by side (greedy, same prompts) and report decode speed
    (per kind and overall with --task-set)."""
    import dataclasses
    import os
    import platform

    from tqdm import tqdm

    from runtime.bench import (DEFAULT_PROMPTS, OVERALL, group_table, run_bench, run_bench_by_group, table,
                               write_chart, write_json)
    from runtime.errors import GenerationError

    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise GenerationError(f"unknown strategy {unknown[0] if unknown else strategies!r}; "
                              f"expected some of {', '.join(STRATEGIES)}")
    if repeats < 1:
        raise GenerationError(f"--repeats must be >= 1, got {repeats}")
    _check_task_set_use(task_set, kinds, per_kind, "--prompt" if prompts else None)
    if warmup < 0:
        raise GenerationError(f"--warmup must be >= 0, got {warmup}")
    if max_new_tokens < 2:
        raise GenerationError(f"--max-new-tokens must be >= 2 to time decoding, got {max_new_tokens}")
    _check_output_file(json_path, "--json")
    _check_output_file(chart_path, "--chart")
    from runtime.generator import Generator

    generator = Generator.from_artifacts(artifacts, engine, threads)
    if task_set:
        ids, groups = _task_prompts(generator, task_set, kinds, per_kind, max_new_tokens)
    else:
        ids, groups = [generator.encode(p, chat=True) for p in (prompts or DEFAULT_PROMPTS)], None
    with tqdm(total=(warmup + repeats) * len(names), desc="bench", disable=None) as bar:
        def progress(message: str) -> None:
            bar.set_description(message)
            bar.update(1)

        options = _schedule(**schedule)
        if groups:
            by_kind = run_bench_by_group(generator, ids, groups, names, max_new_tokens, repeats, warmup, progress,
                                         **options)
            figures = by_kind[OVERALL]
        else:
            by_kind, figures = None, run_bench(generator, ids, names, max_new_tokens, repeats, warmup, progress,
                                               **options)
    if by_kind:
        counts = {kind: groups.count(kind) for kind in dict.fromkeys(groups)}
        click.echo(group_table(by_kind, {**counts, OVERALL: len(ids)}))
    else:
        click.echo(table(figures))
    manifest = generator.artifacts.manifest
    context = {"artifacts": str(artifacts), "engine": engine or "exported graphs (onnxruntime CPU)",
               "dtype": manifest.dtype, "machine": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "threads": threads, "prompts": len(ids),
               "max_new_tokens": max_new_tokens, "repeats": repeats, "warmup": warmup, "task_set": task_set,
               **{k: (dataclasses.asdict(v) if k == "drafts" else v) for k, v in options.items()}}
    write_json(figures, json_path, context, by_kind)
    prompts_label = f"{len(ids)} {task_set} prompts" if task_set else f"{len(ids)} prompts"
    try:
        import matplotlib  # noqa: F401  (the `bench` extra)
    except ImportError:
        click.echo(f"wrote {json_path}; no chart: matplotlib is not installed (pip install 'recycle-export[bench]')")
        return
    write_chart(figures, chart_path, f"{Path(artifacts).name} ({engine or manifest.dtype + ' graphs'}, "
                                     f"{context['cores']} cores): {max_new_tokens} new tokens x {prompts_label}")
    click.echo(f"wrote {json_path} and {chart_path}")


def _check_output_file(path: str | None, option: str) -> None:
    """Refuse, before a long run, an output file whose folder does not exist.

    Raises: GenerationError naming the option and the folder."""
    from runtime.errors import GenerationError

    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise GenerationError(f"{option} {path}: folder {parent} does not exist; create it first")


@main.command("eval")
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--prompts", "count", type=int, default=None, help="Held-out prompts to use [default: 32].")
@click.option("--template-set", type=click.Choice(list(TEMPLATE_SETS)), default="instructions",
              show_default=True, help="Which template set of runtime/prompts.py the held-out prompts come from.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--engine", default=None, help="An engine built under the artifacts (`cli.py build`), e.g. cpu-int4; default: the exported graphs on the CPU.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
@click.option("--gates", default="", help="Also measure alternate's confidence gate at these values "
                                         "(comma-separated, e.g. 0,0.5,0.8,0.95): speedup against NLL cost.")
@_task_set_options
def eval_cmd(artifacts, count, template_set, max_new_tokens, engine, threads, json_path, gates, task_set, kinds,
             per_kind) -> None:
    """Module quality on held-out prompts (or a task set's, per kind and overall): top-1
    agreement, verify acceptance, alternate's NLL cost."""
    import dataclasses
    import json

    from tqdm import tqdm

    from runtime.errors import GenerationError
    from runtime.bench import text_table
    from runtime.evaluate import OVERALL, evaluate_by_group, gate_curve, table
    from runtime.generator import Generator
    from runtime.files import write_text
    from runtime.prompts import prompts

    _check_task_set_use(task_set, kinds, per_kind, "--prompts" if count is not None else None)
    held_out = prompts("heldout", template_set)
    count = 32 if count is None else count
    if not task_set and not 1 <= count <= len(held_out):
        raise GenerationError(f"--prompts must be in 1..{len(held_out)}, got {count}")
    if max_new_tokens < 1:
        raise GenerationError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    _check_output_file(json_path, "--json")
    try:
        gate_values = tuple(float(g) for g in gates.split(",") if g.strip())
    except ValueError:
        raise GenerationError(f"--gates takes comma-separated numbers in [0, 1], got {gates!r}") from None
    if any(not 0.0 <= g <= 1.0 for g in gate_values):
        raise GenerationError(f"--gates values must be in [0, 1], got {gates!r}")
    generator = Generator.from_artifacts(artifacts, engine, threads)
    if task_set:
        ids, groups = _task_prompts(generator, task_set, kinds, per_kind, max_new_tokens)
    else:
        ids = [generator.encode(text, chat=True) for text in held_out[:count]]
        groups = [OVERALL] * len(ids)
    with tqdm(total=len(ids), desc="eval", disable=None) as bar:
        report = evaluate_by_group(generator, ids, groups, max_new_tokens, lambda done, total: bar.update(done - bar.n))
    figures = report[OVERALL]
    if task_set:
        click.echo(f"task set {task_set}: {figures.prompts} prompts")
        click.echo(table(report))
    else:
        click.echo(f"held-out prompts: {figures.prompts} of the {template_set} set (topics never seen in training)")
        click.echo(f"top-1 agreement with the base: {figures.top1_agreement:.3f} over {figures.agreement_tokens} tokens")
        click.echo(f"verify acceptance (greedy): {figures.verify_acceptance:.3f}")
        click.echo(f"NLL per token under the base: standard {figures.nll_standard:.4f}, alternate "
                   f"{figures.nll_alternate:.4f} ({figures.alternate_nll_increase:+.1%})")
    curve = []
    if gate_values:
        with tqdm(total=len(ids), desc="gates", disable=None) as bar:
            curve = gate_curve(generator, ids, gate_values, max_new_tokens, lambda done, total: bar.update(done - bar.n))
        click.echo("alternate's confidence gate (generate --strategy alternate --min-confidence P):")
        click.echo(text_table([("gate", "tokens per base call", "speedup", "NLL cost")] + [
            (f"{p.gate:g}", f"{p.tokens_per_base_call:.2f}", f"{p.speedup:.2f}x", f"{p.nll_increase:+.1%}")
            for p in curve]))
    if json_path:
        record = dataclasses.asdict(figures)
        if task_set:
            record = {**record, "task_set": task_set, "kinds": {k: dataclasses.asdict(e) for k, e in report.items()}}
        record["gates"] = [dataclasses.asdict(p) for p in curve]
        write_text(Path(json_path), json.dumps(record, indent=2) + "\n")


@main.command("serve")
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--engine", default=None, help="An engine built under the artifacts (`cli.py build`), e.g. cpu-int4; default: the exported graphs on the CPU.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="verify", show_default=True,
              help="Strategy of requests that name none (a request's `strategy` field overrides it).")
@click.option("--max-batch", type=int, default=2, show_default=True,
              help="Generations decoding at once: the continuous batch's rows (standard) and the generations "
                   "run one at a time (alternate, verify) together.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests waiting for a slot before the server answers 429.")
@click.option("--api-key", default=None, envvar="RECYCLE_API_KEY",
              help="Require `Authorization: Bearer KEY` (or set RECYCLE_API_KEY).")
@click.option("--max-tokens", type=int, default=None, help="Largest max_tokens a request may ask (default: the context).")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="Largest request body.")
@click.option("--model-name", default=None, help="The model id clients send (default: the export folder's name, plus -ENGINE).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
def serve_cmd(artifacts, engine, host, port, strategy, max_batch, max_queue, api_key, max_tokens, max_body_bytes,
          model_name, threads) -> None:
    """Answer OpenAI-compatible requests (/v1/chat/completions, /v1/completions) over HTTP."""
    from serve.app import Settings, default_model_id, serve as run_server

    settings = Settings(model_name or default_model_id(artifacts, engine), strategy, max_batch, max_queue, api_key,
                        max_body_bytes, max_tokens)
    run_server(artifacts, engine, host, port, settings, threads,
               on_ready=lambda address: click.echo(f"serving {settings.model_id} on http://{address[0]}:{address[1]}/v1",
                                                   err=True))


def _check_task_set_use(task_set: str | None, kinds: str | None, per_kind: int | None, other: str | None) -> None:
    """Raises: GenerationError for --kinds/--per-kind without --task-set, or --task-set with
    another source of prompts."""
    from runtime.errors import GenerationError

    if task_set and other:
        raise GenerationError(f"--task-set and {other} both choose the prompts; give one")
    if not task_set and (kinds or per_kind is not None):
        raise GenerationError("--kinds and --per-kind select from a task set; add --task-set NAME")


if __name__ == "__main__":
    main()
