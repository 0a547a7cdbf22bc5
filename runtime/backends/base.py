"""What every backend is: the Backend protocol, and the check of an engine's I/O against
the contract. Standard library and numpy only."""

from __future__ import annotations

from typing import Protocol

from runtime import contract as C
from runtime.errors import ArtifactError


class Backend(Protocol):
    """What the Generator needs from an inference engine."""

    def graph_io(self, graph: str) -> tuple[list[C.TensorSpec], list[C.TensorSpec]]:
        """The inputs and outputs of `graph` as the engine declares them."""

    def new_kv_pool(self, dims: C.Dims, batch: int, capacity: int):
        """A KV pool (runtime.kv.KVPool's interface) in the memory this backend runs from."""

    def run(self, graph: str, feeds: dict, kv_outputs: dict | None = None) -> dict:
        """Run one step of `graph` ("full_step" or "recycle_step"); outputs by name.
        kv_outputs (from the pool's output_buffers) says where present.* should be written,
        for backends that keep the KV cache in device memory."""

    def close(self) -> None:
        """Free what the backend holds (sessions, streams, device buffers). Idempotent;
        the backend cannot run afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_against_contract(graph: str, declared: tuple[list[C.TensorSpec], list[C.TensorSpec]],
                           expected: C.GraphContract, rebuild: str) -> None:
    """Refuse an engine whose I/O differs from the contract, naming the tensor.

    Symbolic dimensions may carry any name in an engine; fixed ones must match.

    Raises:
        ArtifactError: a tensor is missing, extra, or has another dtype or shape.
    """
    for kind, got, want in (("input", declared[0], expected.inputs), ("output", declared[1], expected.outputs)):
        got_by_name = {t.name: t for t in got}
        for spec in want:
            actual = got_by_name.pop(spec.name, None)
            if actual is None:
                raise ArtifactError(f"{graph}: {kind} {spec.name!r} is missing; {rebuild}")
            fixed_ok = len(actual.shape) == len(spec.shape) and all(
                isinstance(w, str) or a == w for a, w in zip(actual.shape, spec.shape))
            if actual.dtype != spec.dtype or not fixed_ok:
                raise ArtifactError(f"{graph}: {kind} {spec.name!r} is {actual.dtype} {list(actual.shape)}, "
                                    f"expected {spec.dtype} {list(spec.shape)}; {rebuild}")
        if got_by_name:
            raise ArtifactError(f"{graph}: unexpected {kind} {next(iter(got_by_name))!r}; {rebuild}")
