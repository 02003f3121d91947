"""Replay a module's decode-step forward from CUDA graphs, one per input shape.

At decode time a Llama 4 MoE layer sees a handful of tokens: its GPU work takes microseconds and the ~25 kernel
launches of the fast FP8 MoE (router, sort, gather, two FP8 quantizations, two grouped GEMMs, shared expert,
scatter) cost more host time than that. A CUDA graph turns them into one launch. transformers does not compile
Llama 4 (its `get_compiled_call` returns the eager call for llama4), so this is done per module, where
llama4ctl owns the code and knows it never synchronizes with the host.

`ShapeGraphs(fn)` calls `fn(x)` eagerly the first time it sees a shape (a prefill shape usually comes once),
captures a graph at the second call of the same shape, and replays it from then on: the input is copied into
the graph's static input, the graph is replayed, and the graph's static outputs are returned. **Outputs are
overwritten by the next replay of the same shape**, which is how a decoder layer uses them (the residual add
makes a new tensor right away). The layers of one model share one memory pool (`GraphPool`): their graphs are
replayed in the order they were captured (layer by layer), which is what makes sharing it safe. The pool goes
with the model: a pool id kept for the whole process could outlive the graphs it was made for.

A capture that fails (an operation that synchronizes with the host, say) switches that instance to eager for
good and keeps the reason (`disabled`).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import torch

#: graphs only for inputs of at most this many rows (decode steps), never for prefill-sized ones
MAX_ROWS = 256

_STREAMS: dict[int, Any] = {}


class GraphPool:
    """One CUDA graph memory pool shared by the ShapeGraphs of one model (made at the first capture)."""

    def __init__(self) -> None:
        self._handle: Any = None

    def handle(self) -> Any:
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle


def _capture_stream(device: torch.device) -> Any:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _STREAMS:
        _STREAMS[index] = torch.cuda.Stream(device=index)
    return _STREAMS[index]


def _release_random_generator(stream: Any) -> None:
    """A capture that failed leaves the device's default random generator marked as capturing (torch stops before
    its capture epilogue), and the next random op outside a capture then fails, sampling included. One trivial
    capture that ends normally runs the epilogue and clears the mark."""
    scratch = torch.zeros(1, device=stream.device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        scratch.add_(1)
        graph.capture_end()
    torch.cuda.current_stream(stream.device).wait_stream(stream)


class _Graph:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph: Any, static_in: torch.Tensor, static_out: tuple[torch.Tensor, ...]):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


class ShapeGraphs:
    """fn(x) -> tuple of tensors, replayed from a CUDA graph per (shape, dtype, device) after its second call."""

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], *, max_rows: int = MAX_ROWS,
                 pool: GraphPool | None = None):
        # a bound method is held weakly: its module owns this object, and a module kept alive by a reference cycle
        # would be collected whenever the garbage collector runs, possibly in the middle of another capture
        self._fn = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else (lambda: fn)
        self.max_rows = max_rows
        self.pool = pool or GraphPool()
        self.enabled = True
        self.disabled: str | None = None  # why capturing stopped, after a failed capture
        self.replays = 0
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: dict[tuple, int] = {}

    @property
    def fn(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        return self._fn()

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def reset(self) -> None:
        """Forget every graph (the weights moved: the graphs point at the old addresses)."""
        self._graphs.clear()
        self._seen.clear()

    def usable(self, x: torch.Tensor) -> bool:
        return (self.enabled and self.disabled is None and x.is_cuda and x.dim() >= 1 and x.shape[0] <= self.max_rows
                and not torch.is_grad_enabled() and not torch.cuda.is_current_stream_capturing())

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.usable(x):
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            seen = self._seen[key] = self._seen.get(key, 0) + 1
            if seen < 2:
                return self.fn(x)
            graph = self._capture(x)
            if graph is None:
                return self.fn(x)
            self._graphs[key] = graph
        graph.static_in.copy_(x)
        graph.graph.replay()
        self.replays += 1
        return graph.static_out

    def _capture(self, x: torch.Tensor) -> _Graph | None:
        static_in = x.clone()
        stream = _capture_stream(x.device)
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(torch.cuda.current_stream(x.device))
        # no garbage collection while capturing: freeing another graph (or its pool) then breaks the capture and
        # leaves the CUDA random generator marked as capturing ("Offset increment outside graph capture")
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.stream(stream):
                self.fn(static_in)  # warm-up on the capture stream (lazy kernel and workspace set-up)
                graph.capture_begin(pool=self.pool.handle())
                try:
                    out = self.fn(static_in)
                finally:
                    graph.capture_end()
        except RuntimeError as e:  # e.g. "operation not permitted when stream is capturing"
            self.disabled = " ".join(str(e).split())[:200]
            torch.cuda.current_stream(x.device).wait_stream(stream)
            _release_random_generator(stream)
            return None
        finally:
            if collecting:
                gc.enable()
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return _Graph(graph, static_in, tuple(out))
