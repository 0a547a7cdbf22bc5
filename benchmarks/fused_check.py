"""The fused ONNX Runtime graphs (engines/ort_fused.py, contract inplace-kv-v1) against the
portable export: parity of logits and hidden states over a decode with in-place KV buffers
(prefill, 1- and 3-token steps, a rollback), greedy tokens, node counts, step latency and
session memory.

    python benchmarks/fused_check.py --artifacts build/smollm2-onnx [--precisions fp32,int4]

Builds go to --out (default: <artifacts>-fused/<precision>, reused when present). Each
latency and memory figure comes from a fresh interpreter holding one pair of sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import contract as C  # noqa: E402
from runtime.artifacts import Artifacts  # noqa: E402

PROMPT = ("Explain in a few sentences why the sky looks blue during the day and red at sunset, "
          "and what that has to do with the wavelength of light.")


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class PortableStepper:
    """One portable graph with its growing (concat) KV: the reference."""

    def __init__(self, sess, dims: C.Dims, layers: range):
        self.sess, self.layers, self.length = sess, layers, 0
        empty = np.zeros((1, dims.n_kv_heads, 0, dims.head_dim), np.float32)  # (B, H_kv, 0, D)
        self.past = {name(i): empty for i in layers for name in (C.past_key, C.past_value)}
        self.outputs = [o.name for o in sess.get_outputs()]

    def step(self, ids: list[int], num_logits: int, hidden: np.ndarray | None = None):
        new = len(ids)
        feeds = {C.INPUT_IDS: np.array([ids], np.int64),
                 C.POSITION_IDS: np.arange(self.length, self.length + new)[None],
                 C.ATTENTION_MASK: np.ones((1, self.length + new), np.int64),
                 C.NUM_LOGITS_INPUT: np.array([num_logits], np.int64), **self.past}
        if hidden is not None:
            feeds[C.HIDDEN_STATES] = hidden
        out = dict(zip(self.outputs, self.sess.run(self.outputs, feeds)))
        for i in self.layers:
            for past, present in ((C.past_key, C.present_key), (C.past_value, C.present_value)):
                self.past[past(i)] = out[present(i)]
        self.length += new
        return out[C.LOGITS], out[self.outputs[1]]

    def rollback(self, n: int) -> None:
        self.length -= n
        self.past = {k: np.ascontiguousarray(v[:, :, :self.length]) for k, v in self.past.items()}


class FusedStepper:
    """One fused graph over fixed-capacity KV buffers that GroupQueryAttention updates in
    place: each present.* output is bound to its past_key_values.* buffer."""

    def __init__(self, sess, dims: C.Dims, layers: range, capacity: int):
        import onnxruntime as ort

        self.sess, self.length, self.capacity = sess, 0, capacity
        shape = (1, dims.n_kv_heads, capacity, dims.head_dim)  # (B, H_kv, capacity, D)
        self.kv = {(name(i), present(i)): ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                   for i in layers for name, present in ((C.past_key, C.present_key),
                                                         (C.past_value, C.present_value))}
        self.hidden_out = sess.get_outputs()[1].name
        self.binding = sess.io_binding()
        for (past, present), buffer in self.kv.items():
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)
        self.binding.bind_output(C.LOGITS)
        self.binding.bind_output(self.hidden_out)

    def step(self, ids: list[int], num_logits: int, hidden: np.ndarray | None = None):
        new = len(ids)
        total = self.length + new
        assert total <= self.capacity
        self._feeds = {C.INPUT_IDS: np.array([ids], np.int64), C.SEQLENS_K: np.array([total - 1], np.int32),
                       C.TOTAL_SEQUENCE_LENGTH: np.array(total, np.int32),
                       C.NUM_LOGITS_INPUT: np.array([num_logits], np.int64)}
        if hidden is not None:
            self._feeds[C.HIDDEN_STATES] = np.ascontiguousarray(hidden, np.float32)
        for name, value in self._feeds.items():
            self.binding.bind_cpu_input(name, value)
        for name in (C.LOGITS, self.hidden_out):  # shapes change with new and num_logits: ORT allocates
            self.binding.bind_output(name)
        self.sess.run_with_iobinding(self.binding)
        self.length = total
        # Outputs come in binding order: the KV buffers first, then logits and hidden states.
        logits, hidden_out = (v.numpy() for v in self.binding.get_outputs()[-2:])
        return logits, hidden_out

    def rollback(self, n: int) -> None:
        self.length -= n  # the stale rows are overwritten by the next step


def parity(art: Artifacts, fused_dir: Path, threads: int, ref_paths: dict | None = None) -> dict:
    """Teacher-forced decode through both stacks; the max abs differences per step kind,
    and greedy tokens of a 24-token standard decode."""
    dims = art.dims
    base_layers = range(dims.n_layers)
    module_layers = range(dims.n_layers, dims.n_layers + dims.recycle_layers)
    ref_paths = ref_paths or {n: art.graph_path(n) for n in (C.FULL_STEP, C.RECYCLE_STEP)}
    ref = {n: session(p, threads) for n, p in ref_paths.items()}
    fus = {n: session(fused_dir / f"{n}.onnx", threads) for n in (C.FULL_STEP, C.RECYCLE_STEP)}
    if art.manifest.tokenizer:
        prompt = art.codec().encode(PROMPT, chat=True)
    else:  # the tiny test model has no tokenizer: any ids will do
        prompt = [int(t) for t in np.random.default_rng(0).integers(3, dims.vocab_size, 40)]
    capacity = min(art.max_seq_len, len(prompt) + 64)
    # The continuation: the reference's own greedy tokens (standard decoding).
    rb, fb = PortableStepper(ref[C.FULL_STEP], dims, base_layers), FusedStepper(fus[C.FULL_STEP], dims, base_layers, capacity)
    rl, _ = rb.step(prompt, 1)
    fl, _ = fb.step(prompt, 1)
    greedy_ref, greedy_fused = [int(rl[0, -1].argmax())], [int(fl[0, -1].argmax())]
    for _ in range(23):
        rl, _ = rb.step(greedy_ref[-1:], 1)
        fl, _ = fb.step(greedy_fused[-1:], 1)
        greedy_ref.append(int(rl[0, -1].argmax()))
        greedy_fused.append(int(fl[0, -1].argmax()))
    answer = greedy_ref
    # Teacher forced over the same tokens: prefill, 1-token steps, 3-token steps, rollback 2.
    rb, fb = PortableStepper(ref[C.FULL_STEP], dims, base_layers), FusedStepper(fus[C.FULL_STEP], dims, base_layers, capacity)
    rm, fm = (PortableStepper(ref[C.RECYCLE_STEP], dims, module_layers),
              FusedStepper(fus[C.RECYCLE_STEP], dims, module_layers, capacity))
    worst: dict[str, float] = {}
    prev_h = {"ref": np.zeros((1, 1, dims.dim), np.float32), "fused": np.zeros((1, 1, dims.dim), np.float32)}
    last_h = {}
    scale: dict[str, float] = {}

    def both(kind: str, ids: list[int]) -> None:
        n = len(ids)
        (lr, hr), (lf, hf) = rb.step(ids, n), fb.step(ids, n)
        # The module on (h_{j-1}, x_j), each stack fed its own base's h.
        mr = rm.step(ids, n, np.concatenate([prev_h["ref"], hr[:, :-1]], axis=1))
        mf = fm.step(ids, n, np.concatenate([prev_h["fused"], hf[:, :-1]], axis=1))
        prev_h["ref"], prev_h["fused"] = hr[:, -1:], hf[:, -1:]
        last_h["ref"], last_h["fused"] = hr, hf
        for name, a, b in (("logits", lr, lf), ("hidden_states", hr, hf),
                           ("module_logits", mr[0], mf[0]), ("module_hidden_states", mr[1], mf[1])):
            key = f"{kind}/{name}"
            worst[key] = max(worst.get(key, 0.0), float(np.abs(a - b).max()))
        scale["logits"] = max(scale.get("logits", 0.0), float(np.abs(lr).max()))
        worst[f"{kind}/argmax_agree"] = min(worst.get(f"{kind}/argmax_agree", 1.0),
                                            float((lr.argmax(-1) == lf.argmax(-1)).mean()))

    both("prefill", prompt)
    pos = 0
    for _ in range(4):
        both("step1", answer[pos:pos + 1])
        pos += 1
    for _ in range(3):
        both("step3", answer[pos:pos + 3])
        pos += 3
    # Roll back 2 positions of both caches (a rejected 2-token draft), then go on.
    for stepper in (rb, fb, rm, fm):
        stepper.rollback(2)
    pos -= 2
    prev_h = {k: h[:, -3:-2] for k, h in last_h.items()}  # h of the last position kept
    both("after_rollback_step3", answer[pos:pos + 3])
    pos += 3
    both("after_rollback_step1", answer[pos:pos + 1])
    return {"prompt_tokens": len(prompt), "max_abs_diff": worst, "reference_max_abs_logit": scale["logits"],
            "greedy_identical": greedy_ref == greedy_fused,
            "greedy_first_mismatch": next((i for i, (a, b) in enumerate(zip(greedy_ref, greedy_fused)) if a != b), None),
            "greedy_tokens": len(greedy_ref)}


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def rss_mib() -> float:
    """Resident memory after handing freed heap back to the system (glibc keeps the pages
    that loading a graph's protobuf used, which would hide what the session holds)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure includes freed heap
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_one(kind: str, art_dir: str, graphs_dir: str, threads: int, repeats: int, past: int) -> dict:
    """In a fresh interpreter: load the pair of sessions, time full_step with 1 and 4 new
    tokens and recycle_step with 2 at `past` cached positions (median of `repeats`)."""
    art = Artifacts.load(art_dir, check_hashes=False)
    dims = art.dims
    base_layers = range(dims.n_layers)
    module_layers = range(dims.n_layers, dims.n_layers + dims.recycle_layers)
    before = rss_mib()
    sess = {n: session(Path(graphs_dir) / f"{n}.onnx", threads) for n in (C.FULL_STEP, C.RECYCLE_STEP)}
    loaded = rss_mib()
    rng = np.random.default_rng(0)
    prefix = [int(t) for t in rng.integers(3, dims.vocab_size, past)]
    times = {}
    for label, graph, layers, new in (("full_step new=1", C.FULL_STEP, base_layers, 1),
                                      ("full_step new=4", C.FULL_STEP, base_layers, 4),
                                      ("recycle_step new=2", C.RECYCLE_STEP, module_layers, 2)):
        hidden = np.zeros((1, past, dims.dim), np.float32) if graph == C.RECYCLE_STEP else None
        step_hidden = np.zeros((1, new, dims.dim), np.float32) if graph == C.RECYCLE_STEP else None
        if kind == "fused":
            stepper = FusedStepper(sess[graph], dims, layers, past + 8)
        else:
            stepper = PortableStepper(sess[graph], dims, layers)
        stepper.step(prefix, 1, hidden)
        ids = [int(t) for t in rng.integers(3, dims.vocab_size, new)]
        values = []
        for i in range(repeats + 3):
            start = time.perf_counter()
            stepper.step(ids, new, step_hidden)
            if i >= 3:
                values.append(time.perf_counter() - start)
            stepper.rollback(new)  # the same past every time
        times[label] = statistics.median(values) * 1e3
    return {"rss_before_mib": before, "rss_loaded_mib": loaded, "rss_after_steps_mib": rss_mib(),
            "median_ms": times}


def portable_build(art: Artifacts, out: Path, precision: str) -> Path:
    """The portable graphs weight-quantized as the fused ones are (fp32: the export itself)."""
    if precision == "fp32":
        return art.folder
    import onnx

    from engines.ort_fused import quantize

    out.mkdir(parents=True, exist_ok=True)
    for name in (C.FULL_STEP, C.RECYCLE_STEP):
        if not (out / f"{name}.onnx").is_file():
            onnx.save_model(quantize(onnx.load(str(art.graph_path(name))), precision), str(out / f"{name}.onnx"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("--precisions", default="fp32,int4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--past", type=int, default=100)
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--bench-one", nargs=2, metavar=("KIND", "GRAPHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bench_one:
        print(json.dumps(bench_one(args.bench_one[0], args.artifacts, args.bench_one[1], args.threads,
                                   args.repeats, args.past)))
        return
    from engines.ort_fused import build_fused

    art = Artifacts.load(args.artifacts, check_hashes=False)
    root = Path(args.out or f"{str(art.folder).rstrip('/')}-fused")
    report = {}
    for precision in args.precisions.split(","):
        fused_dir = root / precision
        if not (fused_dir / "recycle_step.onnx").is_file():
            build_fused(art, fused_dir, precision)
        portable_dir = portable_build(art, root / f"portable-{precision}", precision)
        entry = report[precision] = {
            "nodes": {f"{kind} {n}": node_count(d / f"{n}.onnx") for kind, d in (("portable", portable_dir),
                                                                                  ("fused", fused_dir))
                      for n in (C.FULL_STEP, C.RECYCLE_STEP)}}
        ref_paths = {n: portable_dir / f"{n}.onnx" if precision != "fp32" else art.graph_path(n)
                     for n in (C.FULL_STEP, C.RECYCLE_STEP)}
        entry["parity_vs_portable_same_precision"] = parity(art, fused_dir, args.threads, ref_paths)
        if precision != "fp32":
            entry["parity_vs_portable_fp32"] = parity(art, fused_dir, args.threads)
        if not args.no_bench:
            for kind, d in (("portable", portable_dir), ("fused", fused_dir)):
                out = subprocess.run([sys.executable, __file__, "--artifacts", args.artifacts, "--threads",
                                      str(args.threads), "--repeats", str(args.repeats), "--past", str(args.past),
                                      "--bench-one", kind, str(d)], capture_output=True, text=True, check=True)
                entry[f"bench {kind}"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({precision: entry}, indent=1), flush=True)


if __name__ == "__main__":
    main()
