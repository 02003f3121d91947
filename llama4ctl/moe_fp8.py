"""Fast FP8 Llama 4 MoE: routed tokens only, one grouped FP8 GEMM for gate_up and one for down.

transformers runs Llama 4 experts densely: every token goes through every expert (`Llama4TextMoe` multiplies
the input by the router score, which is 0 for the experts not picked). Its FP8 module
(`FbgemmFp8Llama4TextExperts`) then loops over the experts in Python, quantizing activations expert by expert.
`Fp8Llama4TextMoe` replaces a loaded `Llama4TextMoe` with the same math over the routed (token, expert) pairs
only:

    logits = router(x); top-k; score = sigmoid(top value)             (as Llama4Router)
    sort the (token, expert) pairs by expert -> offsets per expert    (no host sync: sort + searchsorted)
    a = x[token] * score                                              (score applied before the experts, as transformers)
    gate_up = grouped_mm(fp8(a), W13)  -> up * silu(gate) -> grouped_mm(fp8(.), W2)
    out = shared_expert(x); out[token] += routed                      (index_add_)

Weights: per-output-row FP8 E4M3 with float32 scales (the fbgemm row-wise convention, w ≈ q · s), stored in
grouped-GEMM layout: W13 [E, 2I, H] (gate rows then up rows), W2 [E, H, I]. Activations: FP8 per row, scale
max(min(row absmax, scale_ub) / 448, 1/(448·512)), as fbgemm's `quantize_fp8_per_row`.

Backends for the two grouped GEMMs (`Fp8GroupedExperts.backend`):
- "grouped":   `torch._scaled_grouped_mm` with row-wise scales (CUDA, compute capability 9.0 / 10.0);
- "fbgemm":    fbgemm-gpu-genai `f8f8bf16_rowwise_grouped_stacked` (CUDA);
- "reference": pure torch, dequantize + one matmul per expert group (any device; the tests' oracle on CPU).
Sources it converts: BF16 `Llama4TextExperts` (quantized here with llama4ctl's fbgemm row-wise math),
transformers' `FbgemmFp8Llama4TextExperts` (fbgemm_fp8 checkpoints: fused FP8 [E,H,2I] / [E,I,H] with scales
[E,1,2I] / [E,H,1]) and `SequentialLlama4TextExperts` holding compressed-tensors FP8 per-channel weights.
Tensor parallel (torchrun): each rank converts its shard of the experts (all experts, a slice of the expert
width I: gate rows, up rows and down columns of the same slice), computes a partial routed sum and all-reduces
it; see llama4ctl.tp.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama4.modeling_llama4 import Llama4Router, Llama4TextMoe

from llama4ctl import tp
from llama4ctl.graphs import GraphPool, ShapeGraphs
from llama4ctl.quant.fp8 import FBGEMM_MIN_SCALE, FP8_MAX, fbgemm_kernel, fbgemm_rowwise

BACKENDS = ("grouped", "fbgemm", "reference")
DEFAULT_SCALE_UB = 1200.0  # fbgemm's activation_scale_ub (transformers' FbgemmFp8Config default)
_FP8 = torch.float8_e4m3fn


# ---------------------------------------------------------------------------------------------------------------
# Backend selection


def grouped_mm_supported(device: torch.device | str) -> bool:
    """torch._scaled_grouped_mm with row-wise scales: CUDA compute capability 9.0 (H100/H200) or 10.0 (B200)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_grouped_mm"):
        return False
    return torch.cuda.get_device_capability(device) in ((9, 0), (10, 0))


@cache
def _fbgemm_grouped() -> Any | None:
    if fbgemm_kernel() is None:
        return None
    return getattr(torch.ops.fbgemm, "f8f8bf16_rowwise_grouped_stacked", None)


def _aligned(hidden: int | None, expert_dim: int | None) -> bool:
    """torch._scaled_grouped_mm wants both GEMM dims of every weight to be multiples of 16."""
    return hidden is None or expert_dim is None or (hidden % 16 == 0 and expert_dim % 16 == 0)


def pick_backend(device: torch.device | str, requested: str = "auto", *, hidden: int | None = None,
                 expert_dim: int | None = None) -> str:
    """'auto' -> 'grouped' where torch's grouped FP8 GEMM runs (and the widths are multiples of 16), else
    'reference'; an explicit name is checked."""
    device = torch.device(device)
    if requested == "auto":
        return "grouped" if grouped_mm_supported(device) and _aligned(hidden, expert_dim) else "reference"
    if requested not in BACKENDS:
        raise ValueError(f"unknown FP8 MoE backend {requested!r}; choose one of auto, {', '.join(BACKENDS)}")
    if requested == "grouped" and not grouped_mm_supported(device):
        raise ValueError("the 'grouped' FP8 MoE backend needs torch._scaled_grouped_mm on a CUDA GPU with compute "
                         f"capability 9.0 or 10.0 (device: {device})")
    if requested == "grouped" and not _aligned(hidden, expert_dim):
        raise ValueError(f"the 'grouped' FP8 MoE backend needs hidden size and expert width divisible by 16 "
                         f"(here {hidden} and {expert_dim})")
    if requested == "fbgemm" and (device.type != "cuda" or _fbgemm_grouped() is None):
        raise ValueError("the 'fbgemm' FP8 MoE backend needs fbgemm-gpu-genai on a CUDA GPU")
    return requested


# ---------------------------------------------------------------------------------------------------------------
# Math


def quantize_rows(x: torch.Tensor, scale_ub: torch.Tensor | None = None,
                  *, use_kernel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [M, K] -> (FP8 [M, K], float32 scale [M]); x ≈ q · scale[:, None] (fbgemm quantize_fp8_per_row)."""
    kernel = fbgemm_kernel() if use_kernel and x.is_cuda else None
    if kernel is not None:
        q, s = kernel(x.contiguous(), None, scale_ub)
        return q, s.view(-1)
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    if scale_ub is not None:
        amax = torch.minimum(amax, scale_ub.to(amax.device))
    scale = (amax / FP8_MAX).clamp(min=FBGEMM_MIN_SCALE)
    q = (xf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(_FP8)
    return q, scale


def grouped_mm_reference(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor,
                         offs: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """y[rows of group g] = (xq·xs) @ (w[g]·ws[g])ᵀ for xq [M, K], w [G, N, K], ws [G, N], offs = cumulative ends."""
    out = torch.zeros(xq.shape[0], w.shape[1], dtype=out_dtype, device=xq.device)
    start = 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            a = xq[start:end].float() * xs[start:end, None].float()
            b = w[g].float() * ws[g][:, None].float()
            out[start:end] = (a @ b.t()).to(out_dtype)
        start = end
    return out


def _grouped_mm(backend: str, xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor,
                offs: torch.Tensor) -> torch.Tensor:
    if backend == "grouped":
        # mat_b must be column-major [G, K, N]: the transposed view of w [G, N, K] is exactly that.
        return torch._scaled_grouped_mm(xq, w.transpose(-2, -1), xs, ws, offs=offs, out_dtype=torch.bfloat16,
                                        use_fast_accum=True)
    if backend == "fbgemm":
        sizes = torch.diff(offs, prepend=offs.new_zeros(1)).to(torch.int64)
        return _fbgemm_grouped()(xq, w, xs, ws, sizes)
    return grouped_mm_reference(xq, xs, w, ws, offs)


# ---------------------------------------------------------------------------------------------------------------
# Modules


class Fp8GroupedExperts(nn.Module):
    """Routed experts as FP8 row-wise weights in grouped-GEMM layout; forward over expert-sorted rows."""

    def __init__(self, num_experts: int, hidden_size: int, expert_dim: int, hidden_act: str = "silu", *,
                 device: torch.device | str | None = None, backend: str = "reference",
                 scale_ub: float | None = DEFAULT_SCALE_UB):
        super().__init__()
        self.num_experts, self.hidden_size, self.expert_dim = num_experts, hidden_size, expert_dim
        self.act_fn = ACT2FN[hidden_act]
        self.hidden_act = hidden_act
        self.backend = backend
        kw = {"device": device}
        self.register_buffer("w13", torch.empty(num_experts, 2 * expert_dim, hidden_size, dtype=_FP8, **kw))
        self.register_buffer("s13", torch.empty(num_experts, 2 * expert_dim, dtype=torch.float32, **kw))
        self.register_buffer("w2", torch.empty(num_experts, hidden_size, expert_dim, dtype=_FP8, **kw))
        self.register_buffer("s2", torch.empty(num_experts, hidden_size, dtype=torch.float32, **kw))
        ub = None if scale_ub is None else torch.tensor([scale_ub], dtype=torch.float32, device=device)
        self.register_buffer("input_scale_ub", ub, persistent=False)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, hidden={self.hidden_size}, expert_dim={self.expert_dim}, "
                f"backend={self.backend}")

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x [M, H] (rows sorted by expert), offs int32 [E] cumulative row ends -> [M, H] in x's dtype."""
        if x.is_cuda:  # fbgemm kernels launch on the current device: make it x's (models spread over GPUs)
            with torch.cuda.device(x.device):
                return self._forward(x, offs)
        return self._forward(x, offs)

    def _forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        ub = self.input_scale_ub
        xq, xs = quantize_rows(x, ub)
        gate_up = _grouped_mm(self.backend, xq, xs, self.w13, self.s13, offs)
        gate, up = gate_up.chunk(2, dim=-1)
        h = up * self.act_fn(gate)
        hq, hs = quantize_rows(h, ub)
        return _grouped_mm(self.backend, hq, hs, self.w2, self.s2, offs).to(x.dtype)

    # --- conversions -------------------------------------------------------------------------------------------

    @classmethod
    def _for(cls, experts: nn.Module, config: Any, backend: str, scale_ub: float | None) -> Fp8GroupedExperts:
        """An empty instance shaped like (this rank's shard of) transformers' fused experts (gate_up_proj [E, H, 2I])."""
        gate_up = tp.local(experts.gate_up_proj)
        e, h, two_i = gate_up.shape
        return cls(e, h, two_i // 2, getattr(config, "hidden_act", "silu"), device=gate_up.device,
                   backend=backend, scale_ub=scale_ub)

    @classmethod
    def from_bf16(cls, experts: nn.Module, config: Any, *, backend: str = "reference",
                  scale_ub: float | None = DEFAULT_SCALE_UB) -> Fp8GroupedExperts:
        """Quantize transformers' Llama4TextExperts (gate_up_proj [E, H, 2I], down_proj [E, I, H]) expert by expert."""
        gu, down = tp.local(experts.gate_up_proj), tp.local(experts.down_proj)
        new = cls._for(experts, config, backend, scale_ub)
        with torch.no_grad():
            for e in range(new.num_experts):
                q, s = fbgemm_rowwise(gu[e].t())  # [2I, H] rows
                new.w13[e].copy_(q)
                new.s13[e].copy_(s)
                q, s = fbgemm_rowwise(down[e].t())  # [H, I] rows
                new.w2[e].copy_(q)
                new.s2[e].copy_(s)
        return new

    @classmethod
    def from_fbgemm(cls, experts: nn.Module, config: Any, *, backend: str = "reference",
                    scale_ub: float | None = None) -> Fp8GroupedExperts:
        """Re-layout transformers' FbgemmFp8Llama4TextExperts (no requantization: same bytes, transposed)."""
        if scale_ub is None:
            ub = getattr(experts, "input_scale_ub", None)
            scale_ub = float(ub.reshape(-1)[0]) if ub is not None and ub.numel() and float(ub.reshape(-1)[0]) > 0 \
                else DEFAULT_SCALE_UB
        gu, down = tp.local(experts.gate_up_proj), tp.local(experts.down_proj)
        new = cls._for(experts, config, backend, scale_ub)
        with torch.no_grad():
            for e in range(new.num_experts):
                new.w13[e].copy_(gu[e].t())
                new.w2[e].copy_(down[e].t())
            # gate_up's scale is split like its weight (transformers' fbgemm TP plan); down's covers all H rows
            new.s13.copy_(tp.local(experts.gate_up_proj_scale).reshape(new.num_experts, -1).float())
            new.s2.copy_(tp.full(experts.down_proj_scale).reshape(new.num_experts, -1).float())
        return new

    @classmethod
    def from_compressed(cls, experts: nn.ModuleList, config: Any, *, backend: str = "reference",
                        scale_ub: float | None = None) -> Fp8GroupedExperts | None:
        """SequentialLlama4TextExperts of compressed-tensors FP8 per-channel Linears; None if not that scheme."""
        first = experts[0]
        for lin in (first.gate_proj, first.up_proj, first.down_proj):
            if not is_ct_fp8_channel(lin):
                return None
        inter, hidden = tp.local(first.gate_proj.weight).shape
        new = cls(len(experts), hidden, inter, getattr(config, "hidden_act", "silu"),
                  device=tp.local(first.gate_proj.weight).device, backend=backend, scale_ub=scale_ub)
        with torch.no_grad():
            for e, mlp in enumerate(experts):
                new.w13[e, :inter].copy_(tp.local(mlp.gate_proj.weight))
                new.w13[e, inter:].copy_(tp.local(mlp.up_proj.weight))
                new.s13[e, :inter].copy_(_row_scales(mlp.gate_proj))
                new.s13[e, inter:].copy_(_row_scales(mlp.up_proj))
                new.w2[e].copy_(tp.local(mlp.down_proj.weight))
                new.s2[e].copy_(_row_scales(mlp.down_proj))
        return new


def _row_scales(linear: nn.Module) -> torch.Tensor:
    """float32 per-row scales of this rank's rows of linear.weight [out, in]. Chosen from the placements alone
    (the same on every rank), since gathering a scale is a collective every rank must join."""
    w, s = linear.weight, linear.weight_scale
    if tp.linear_split(w) == "out":
        if tp.is_distributed(s) and s.placements == w.placements:
            return tp.local(s).reshape(-1).float()
        row0, rows = tp.local_offsets(w)[0], tp.local(w).shape[0]
        return tp.full(s).reshape(-1)[row0:row0 + rows].float()
    return tp.full(s).reshape(-1).float()


def is_ct_fp8_channel(linear: nn.Module) -> bool:
    """A compressed-tensors Linear still holding FP8 weights with one scale per output row."""
    w, s = getattr(linear, "weight", None), getattr(linear, "weight_scale", None)
    if w is None or s is None or w.dtype != _FP8 or w.dim() != 2:
        return False
    return s.numel() == w.shape[0]


class Fp8Llama4TextMoe(Llama4TextMoe):
    """Llama4TextMoe computed over the routed tokens only, experts in FP8 (a subclass, so transformers' output
    recording of router logits still finds it)."""

    def __init__(self, moe: Llama4TextMoe, experts: Fp8GroupedExperts, *, cuda_graphs: bool = True,  # noqa: D107
                 graph_pool: GraphPool | None = None, process_group: Any = None):
        nn.Module.__init__(self)
        self.process_group = process_group  # tensor parallel: experts hold a slice of I, routed sums are partial
        self.top_k, self.hidden_dim, self.num_experts = moe.top_k, moe.hidden_dim, moe.num_experts
        self.router = moe.router
        self.shared_expert = moe.shared_expert
        self.experts = experts
        ids = torch.arange(self.num_experts, device=experts.w13.device)
        self.register_buffer("_expert_ids", ids, persistent=False)
        # decode steps replayed from CUDA graphs (llama4ctl.graphs): nothing in _forward synchronizes with the host
        self.graphs = ShapeGraphs(self._forward, pool=graph_pool)
        self.graphs.enabled = cuda_graphs and experts.backend != "reference"  # the reference loop reads offsets

    def _apply(self, fn: Any, recurse: bool = True) -> Fp8Llama4TextMoe:
        if hasattr(self, "graphs"):
            self.graphs.reset()  # .to() / .cuda() move the weights: captured graphs would read the old addresses
        return super()._apply(fn, recurse)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits [T, E], top-k expert ids [T, k], scores [T, k] in x's dtype), as Llama4Router."""
        if type(self.router) is Llama4Router:
            logits = nn.functional.linear(x, self.router.weight, self.router.bias)
            top_v, top_i = torch.topk(logits, self.top_k, dim=1)
            return logits, top_i, torch.sigmoid(top_v.float()).to(x.dtype)
        dense_scores, logits = self.router(x)  # some other router module: take its own scores
        top_i = torch.topk(logits, self.top_k, dim=1).indices
        return logits, top_i, dense_scores.gather(1, top_i)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output [T, H], router logits [T, E]); on CUDA at decode sizes both are a graph's static outputs,
        overwritten by the next call with the same shape."""
        return self.graphs(hidden_states.reshape(-1, self.hidden_dim))

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, top_i, scores = self.route(x)
        sorted_e, order = torch.sort(top_i.reshape(-1))
        token = order // self.top_k if self.top_k > 1 else order
        offs = torch.searchsorted(sorted_e, self._expert_ids, right=True, out_int32=True)
        routed_in = x.index_select(0, token) * scores.reshape(-1, 1).index_select(0, order)
        routed_out = self.experts(routed_in, offs)
        out = self.shared_expert(x)
        if self.process_group is None:
            out.index_add_(0, token, routed_out.to(out.dtype))
            return out, logits
        routed = torch.zeros_like(out).index_add_(0, token, routed_out.to(out.dtype))
        torch.distributed.all_reduce(routed, group=self.process_group)
        return out + routed, logits


# ---------------------------------------------------------------------------------------------------------------
# Model surgery


def convert_moe(moe: Llama4TextMoe, config: Any, *, backend: str = "auto", quantize_bf16: bool = False,
                scale_ub: float | None = None, cuda_graphs: bool = True,
                graph_pool: GraphPool | None = None) -> tuple[Fp8Llama4TextMoe | None, str]:
    """(replacement or None, what the experts were). BF16 experts are converted only with quantize_bf16."""
    experts = moe.experts
    kind = type(experts).__name__
    tensors = list(experts.parameters()) + list(experts.buffers())
    sharded = next((t for t in tensors if tp.is_sharded(t)), None)
    device = tp.local(tensors[0]).device if tensors else torch.device("cpu")
    hidden, expert_dim = getattr(config, "hidden_size", None), getattr(config, "intermediate_size", None)
    if sharded is not None and expert_dim is not None:
        expert_dim //= sharded.device_mesh.size()  # each rank's GEMMs see its slice of the expert width
    chosen = pick_backend(device, backend, hidden=hidden, expert_dim=expert_dim)
    if kind == "Llama4TextExperts":
        if not quantize_bf16:
            return None, "bf16"
        new = Fp8GroupedExperts.from_bf16(experts, config, backend=chosen,
                                          scale_ub=DEFAULT_SCALE_UB if scale_ub is None else scale_ub)
        kind = "bf16 (quantized at load)"
    elif kind == "FbgemmFp8Llama4TextExperts":
        new = Fp8GroupedExperts.from_fbgemm(experts, config, backend=chosen, scale_ub=scale_ub)
        kind = "fbgemm_fp8"
    elif kind == "SequentialLlama4TextExperts":
        new = Fp8GroupedExperts.from_compressed(experts, config, backend=chosen, scale_ub=scale_ub)
        if new is None:
            return None, "compressed-tensors (not FP8 per channel: left to transformers)"
        kind = "compressed-tensors FP8"
    else:
        return None, kind
    group = tp.group(sharded) if sharded is not None else None
    return Fp8Llama4TextMoe(moe, new, cuda_graphs=cuda_graphs, graph_pool=graph_pool, process_group=group), kind


def convert_model(model: nn.Module, *, backend: str = "auto", quantize_bf16: bool = False,
                  scale_ub: float | None = None, cuda_graphs: bool = True) -> dict[str, Any]:
    """Swap every Llama4TextMoe of a loaded model for Fp8Llama4TextMoe; frees the old expert tensors as it goes.

    Returns {"moe_layers": converted count, "backend": name or None, "sources": {kind: count},
    "cuda_graphs": whether decode steps will be replayed from CUDA graphs (CUDA, a non-reference backend)}.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    todo = [(name, m) for name, m in model.named_modules()
            if isinstance(m, Llama4TextMoe) and not isinstance(m, Fp8Llama4TextMoe)]
    sources: dict[str, int] = {}
    backends: set[str] = set()
    converted = graphed = 0
    pool = GraphPool()  # the model's layers share one graph memory pool
    for name, moe in todo:
        new, kind = convert_moe(moe, config, backend=backend, quantize_bf16=quantize_bf16, scale_ub=scale_ub,
                                cuda_graphs=cuda_graphs, graph_pool=pool)
        sources[kind] = sources.get(kind, 0) + 1
        if new is None:
            continue
        model.set_submodule(name, new)
        moe.experts = nn.Module()  # drop the last reference to the old expert tensors now, not at the end
        backends.add(new.experts.backend)
        converted += 1
        graphed += new.graphs.enabled and new.experts.w13.is_cuda
    if converted:
        import gc

        gc.collect()  # compressed-tensors' modules sit in reference cycles (hooks): free the old experts now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"moe_layers": converted, "backend": ",".join(sorted(backends)) or None, "sources": sources,
            "cuda_graphs": graphed > 0}


def graph_stats(model: nn.Module) -> dict[str, Any]:
    """What the fast MoE layers' CUDA graphs did: graphs captured, replays, why capturing stopped (if it did)."""
    layers = [m for m in model.modules() if isinstance(m, Fp8Llama4TextMoe)]
    disabled = next((m.graphs.disabled for m in layers if m.graphs.disabled), None)
    return {"captured": sum(m.graphs.captured for m in layers), "replays": sum(m.graphs.replays for m in layers),
            "disabled": disabled}
