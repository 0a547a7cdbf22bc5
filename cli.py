"""recycle-export command line: thin commands over the library (DESIGN.md section 6).

Heavy imports live inside the commands so that `--help` is instant. User errors
(RecycleExportError) print as one `Error: ...` line with exit status 1.
"""

from __future__ import annotations

import logging
import sys

import click

from runtime.errors import RecycleExportError


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
              help="A LLaMA-architecture GGUF file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
def import_gguf_cmd(gguf_path: str, out: str) -> None:
    """Convert a GGUF file into a checkpoint (weights dequantized to float32)."""
    from tqdm import tqdm

    from recycle_export.checkpoint import save_checkpoint
    from recycle_export.gguf_import import import_gguf

    with tqdm(desc="dequantizing", unit="tensor", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        ckpt = import_gguf(gguf_path, progress)
    save_checkpoint(ckpt, out)
    cfg = ckpt.config
    click.echo(f"wrote {out}: {cfg.n_layers} layers, dim {cfg.dim}, vocab {cfg.vocab_size}, "
               f"{sum(p.numel() for p in ckpt.model.base.parameters()) / 1e6:.1f}M base parameters")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="Checkpoint directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to write.")
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
    _echo_validation(manifest["validation"])


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

    _echo_validation(validate_artifacts(artifacts, model_path)["validation"])


@main.command()
@click.option("--artifacts", required=True, type=click.Path(file_okay=False), help="Export directory.")
def inspect(artifacts) -> None:
    """Print the graphs' inputs and outputs, the KV description and the validation figures."""
    from recycle_export.inspect import describe

    click.echo(describe(artifacts))


@main.command()
@click.option("--model", "model_path", type=click.Path(), help="Checkpoint: decode with the PyTorch reference.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--strategy", type=click.Choice(["standard", "alternate", "verify"]), default="standard",
              show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 switches it off.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
def generate(model_path, prompt, chat, strategy, max_new_tokens, temperature, top_k, top_p, seed) -> None:
    """Generate text from a prompt."""
    from recycle_export.checkpoint import load_checkpoint
    from recycle_export.reference import ReferenceDecoder
    from runtime.sampling import SamplingParams
    from runtime.tokenizer import TextCodec

    if model_path is None:
        raise click.UsageError("give --model CKPT")
    sampling = SamplingParams(temperature, top_k, top_p, seed)
    ckpt = load_checkpoint(model_path)
    codec = TextCodec.from_json(ckpt.tokenizer_json, ckpt.generation.chat_template, source=model_path)
    ids = codec.encode(prompt, chat=chat)
    result = ReferenceDecoder(ckpt.model).generate(
        ids, strategy, sampling, max_new_tokens, ckpt.generation.eos_token_ids)
    click.echo(codec.decode(result.tokens))
    st = result.stats
    click.echo(f"[{strategy}] {len(result.tokens)} tokens, finish: {result.finish_reason}, "
               f"base calls {st.base_calls}, module calls {st.module_calls}, "
               f"drafts accepted {st.drafts_accepted}/{st.drafts_proposed}", err=True)


if __name__ == "__main__":
    main()
