"""Fixed-shape decoding steps replayed as CUDA graphs, so that a step costs its kernels and not their launches.

On a GPU a decoder step of a large model at batch 1 is launch-bound: large-v3's 32 layers issue several
hundred small kernels, each launched from Python, and launching them takes far longer than reading the
decoder's weights (evaluation/results/measurements-behind-the-defaults.md). A CUDA graph records one step's kernels
once and replays them with a single launch. That needs a step whose shapes and memory addresses never
change: the caller's step function reads only tensors that stay in place (weights, a preallocated cache)
and the static inputs that ``StepGraphs`` owns, one set per shape, which the caller refills before each
replay. A replay's output lives in a buffer that the next replay of the same shape overwrites.

Without CUDA (or where capture fails), the same static buffers are used and the step runs eagerly, its
result copied into an output buffer that the next call overwrites exactly as a replay would: the
protocol, and a caller that relies on a buffer it should have copied, behave the same on a CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

Output = Tensor | tuple[Tensor, ...]


@dataclass
class _Shape:
    step: Callable[..., Output]
    inputs: tuple[Tensor, ...]  # the static inputs this shape's step reads
    output: Output | None = None  # where its result lands (the graph's own output, or a copy target)
    graph: torch.cuda.CUDAGraph | None = None


class StepGraphs:
    """Runs steps ``step(*inputs) -> Tensor (or tuple of Tensors)`` on static inputs, one CUDA graph per
    key when ``capture``."""

    def __init__(self, capture: bool):
        """``capture``: record CUDA graphs (the steps' device must be CUDA); False runs them eagerly."""
        self.capture = capture
        self._shapes: dict[Hashable, _Shape] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self.captured = 0  # graphs recorded so far
        self.failures: list[str] = []  # why a shape fell back to eager steps

    def clear(self) -> None:
        """Forget every shape (call when a tensor the step reads has been reallocated)."""
        self._shapes.clear()

    def run(self, key: Hashable, step: Callable[..., Output], blank: Callable[[], tuple[Tensor, ...]],
            fill: Callable[[tuple[Tensor, ...]], None]) -> Output:
        """Refill the static inputs of shape ``key`` with ``fill`` and run (or replay) ``step`` on them.

        Args:
            key: identifies the step and its input shapes (one graph each).
            step: a function of tensors without host synchronisation (no ``.item()``, ``.tolist()`` or
                shape that depends on values), reading only tensors that stay at their address; the same
                function whenever the key is (only its first call for a key is used).
            blank: allocates this shape's static inputs the first time it is seen, holding values that
                are safe to run (capture runs the step on them: it must write nothing that matters).
            fill: writes this call's values into the static inputs, in place.
        Returns:
            the step's output, valid until the next ``run`` with the same key.
        """
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(step, blank())
            if self.capture:
                self._record(shape)
        fill(shape.inputs)
        if shape.graph is not None:
            shape.graph.replay()
            return shape.output
        result = shape.step(*shape.inputs)
        results = result if isinstance(result, tuple) else (result,)
        if shape.output is None:
            shape.output = tuple(torch.empty_like(r) for r in results)
        for buffer, r in zip(shape.output, results):
            buffer.copy_(r)
        return shape.output if isinstance(result, tuple) else shape.output[0]

    def _record(self, shape: _Shape) -> None:
        try:
            # Warm up on a side stream first: the first calls allocate library workspaces (cuBLAS), which
            # must not happen during capture.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    shape.step(*shape.inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                shape.output = shape.step(*shape.inputs)
            shape.graph = graph
            self.captured += 1
        except RuntimeError as error:  # e.g. an operation that cannot be captured: stay correct, run eagerly
            shape.graph, shape.output = None, None
            self.failures.append(str(error).splitlines()[0])
            warnings.warn(f"CUDA graph capture failed, running this step shape eagerly: {self.failures[-1]}",
                          stacklevel=3)
