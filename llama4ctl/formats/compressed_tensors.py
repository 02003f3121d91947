"""compressed-tensors `float-quantized` FP8 (FP8_DYNAMIC, FP8_BLOCK) with routed experts unfused per expert.

  Linear and each expert: weight F8_E4M3 [out, in] + weight_scale [out, 1] (channel) or
  [ceil(out/128), ceil(in/128)] (block), in the weight's dtype (BF16 for Llama 4).
  experts.{e}.gate_proj / up_proj [I, H] and down_proj [H, I]: the keys vLLM's Llama 4 loader and transformers'
  pre-quantized path (SequentialLlama4TextExperts) read.
The quantization_config is built with compressed-tensors' own classes so it stays in step with the library;
its `ignore` lists every kept Linear by full module name, as llm-compressor's oneshot writes it.
On CPU the numba kernels of quant/fp8_cpu.py quantize in one pass and write each expert's [out, in] weight
straight from the fused [in, out] slice; on CUDA the torch reference runs. Both give the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import component, parse_fused_expert
from llama4ctl.errors import PlanError
from llama4ctl.formats.base import Format
from llama4ctl.formats.fbgemm_fp8 import compact_kept
from llama4ctl.formats.registry import register
from llama4ctl.formats.selection import Selection
from llama4ctl.plan.ops import OutputSpec, TensorOp, kernel
from llama4ctl.quant.fp8 import ct_block, ct_channel, dequantize_block, dequantize_rowwise
from llama4ctl.quant.fp8_cpu import ct_block_cols, ct_block_rows, ct_channel_cols, ct_channel_rows

SCHEMES = ("FP8_DYNAMIC", "FP8_BLOCK")
BLOCK = (128, 128)


def scale_shape(scheme: str, out_f: int, in_f: int) -> tuple[int, int]:
    if scheme == "FP8_BLOCK":
        return (-(-out_f // BLOCK[0]), -(-in_f // BLOCK[1]))
    return (out_f, 1)


@register
class CompressedTensorsFp8Format(Format):
    name = "compressed-tensors"

    def __init__(self, scheme: str = "FP8_DYNAMIC", selection: Selection | None = None):
        if scheme not in SCHEMES:
            raise PlanError(f"unknown FP8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.selection = selection or Selection()
        self._kept: list[str] = []

    def default_suffix(self) -> str:
        return self.scheme.replace("_", "-")

    def prepare(self, ckpt: Checkpoint) -> None:
        self.selection.check_not_empty(ckpt)
        kept = compact_kept(self.selection.kept_linear_modules(ckpt, per_expert=True), ckpt)
        self._kept = [f"re:{k}\\..*" if k in ("vision_model", "multi_modal_projector") else k for k in kept]

    def _weight_outputs(self, name: str, dtype: str, out_f: int, in_f: int) -> tuple[OutputSpec, OutputSpec]:
        return (OutputSpec(name, "F8_E4M3", (out_f, in_f)),
                OutputSpec(name[: -len("weight")] + "weight_scale", dtype, scale_shape(self.scheme, out_f, in_f)))

    def plan_tensor(self, ref: TensorRef, ckpt: Checkpoint) -> list[TensorOp]:
        comp = component(ref.name)
        if not self.selection.quantizes(ref):
            return [TensorOp("copy", (ref,), (OutputSpec(ref.name, ref.dtype, ref.shape),), {}, comp)]
        params = {"scheme": self.scheme}
        fused = parse_fused_expert(ref.name)
        if fused is None:
            outs = self._weight_outputs(ref.name, ref.dtype, *ref.shape)
            return [TensorOp("ct_fp8_linear", (ref,), outs, params, comp)]
        num_experts, rows, cols = ref.shape
        ops = []
        for e in range(num_experts):
            names = fused.per_expert_weight_names(e)
            if fused.proj == "gate_up_proj":
                outs = (*self._weight_outputs(names[0], ref.dtype, cols // 2, rows),
                        *self._weight_outputs(names[1], ref.dtype, cols // 2, rows))
            else:
                outs = self._weight_outputs(names[0], ref.dtype, cols, rows)
            ops.append(TensorOp("ct_fp8_unfuse", (ref,), outs, {**params, "expert": e}, comp))
        return ops

    def output_config(self, config: dict[str, Any] | None, ops: list[TensorOp]) -> dict[str, Any] | None:
        if config is None:
            return None
        config = dict(config)
        config["quantization_config"] = self.quantization_config()
        return config

    def validate_plan(self, ops: list[TensorOp]) -> None:
        check_vllm_layout([o for op in ops for o in op.outputs], self.ignore_list())

    def ignore_list(self) -> list[str]:
        return list(self._kept) + [p if p.startswith("re:") else f"re:{p}" for p in self.selection.ignore]

    def quantization_config(self) -> dict[str, Any]:
        """compressed-tensors' serialization of its FP8 preset, written without importing the library.

        Importing compressed_tensors costs several seconds of CPU (it pulls in transformers and accelerate),
        as much as quantizing a few GB; tests/unit/test_ct_config.py checks that this dict equals what
        compressed-tensors' own QuantizationConfig(preset_name_to_scheme(...)).model_dump() produces.
        """
        from importlib.metadata import version

        block = self.scheme == "FP8_BLOCK"
        weights = _quant_args(strategy="block" if block else "channel", dynamic=False,
                              block_structure=[128, 128] if block else None)
        activations = _quant_args(strategy="group" if block else "token", dynamic=True,
                                  group_size=128 if block else None)
        group = {"format": "float-quantized", "input_activations": activations, "output_activations": None,
                 "targets": ["Linear"], "weights": weights}
        return {"config_groups": {"group_0": group}, "quant_method": "compressed-tensors", "kv_cache_scheme": None,
                "format": "float-quantized", "quantization_status": "compressed", "global_compression_ratio": None,
                "ignore": self.ignore_list(), "version": version("compressed-tensors"), "transform_config": {}}

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "backend": "llm-compressor", "scheme": self.scheme,
                "ignore": self.selection.ignore, "experts_only": self.selection.experts_only}


def _quant_args(*, strategy: str, dynamic: bool, group_size: int | None = None,
                block_structure: list[int] | None = None) -> dict[str, Any]:
    return {"actorder": None, "block_structure": block_structure, "dynamic": dynamic, "group_size": group_size,
            "num_bits": 8, "observer": None, "observer_kwargs": {}, "scale_dtype": None, "strategy": strategy,
            "symmetric": True, "type": "float", "zp_dtype": None}


def quantize_weight(w: Any, scheme: str) -> tuple[Any, Any, float, float]:
    """(q, scale, err², norm²) for one [out, in] weight: the torch path (CUDA)."""
    if scheme == "FP8_BLOCK":
        q, s = ct_block(w, BLOCK)
        d = dequantize_block(q, s, BLOCK) - w.float()
    else:
        q, s = ct_channel(w)
        d = dequantize_rowwise(q, s) - w.float()
    return q, s, float(d.pow(2).sum()), float(w.float().pow(2).sum())


def _rel(err2: float, norm2: float) -> float:
    return (err2 / norm2) ** 0.5 if norm2 else 0.0


@kernel("ct_fp8_linear")
def quantize_linear(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,), (w_out, s_out) = op.sources, op.outputs
    w = ctx.load(src)
    if ctx.device == "cpu":
        q, s, err2, norm2 = (ct_block_rows if op.params["scheme"] == "FP8_BLOCK" else ct_channel_rows)(w)
    else:
        q, s, err2, norm2 = quantize_weight(w, op.params["scheme"])
    yield w_out.name, q
    yield s_out.name, s
    ctx.recorder.record(w_out.name, rel_error=_rel(err2, norm2))


@kernel("ct_fp8_unfuse")
def quantize_expert(ctx: Any, op: TensorOp) -> Iterator[tuple[str, Any]]:
    (src,) = op.sources
    w = ctx.load_expert(src, op.params["expert"])  # [in, out] slice of the fused tensor (on the GPU, whole)
    outs = op.outputs
    half = w.shape[-1] // 2
    parts = [w[:, :half], w[:, half:]] if len(outs) == 4 else [w]  # [in, out] each; the weights are their .T
    for i, part in enumerate(parts):
        if ctx.device == "cpu":  # one pass from the slice to the transposed FP8 weight
            q, s, err2, norm2 = (ct_block_cols if op.params["scheme"] == "FP8_BLOCK" else ct_channel_cols)(part)
        else:
            q, s, err2, norm2 = quantize_weight(part.t().contiguous(), op.params["scheme"])
        yield outs[2 * i].name, q
        yield outs[2 * i + 1].name, s
        ctx.recorder.record(outs[2 * i].name, rel_error=_rel(err2, norm2))


# vLLM fuses these sibling projections into one layer; they must all be quantized or all be ignored.
_VLLM_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _ignored(module: str, ignore: list[str]) -> bool:
    import re

    return any(re.match(p[3:], module) if p.startswith("re:") else p == module for p in ignore)


def check_vllm_layout(outputs: list[OutputSpec], ignore: list[str]) -> None:
    """Static check of what vLLM's Llama 4 loader expects from a compressed-tensors checkpoint.

    - every FP8 weight has its weight_scale, and every BF16 Linear of the language model is in `ignore`
      (targets=["Linear"] would otherwise make vLLM look for a scale that is not there);
    - fused siblings (q/k/v, gate/up) are quantized alike;
    - each MoE layer has per-expert gate/up/down keys for experts 0..E-1;
    - every ignore entry names a module that exists (mismatched names are a common upstream failure).
    """
    from llama4ctl.checkpoint.layout import parse_per_expert

    names = {o.name: o for o in outputs}
    modules: dict[str, bool] = {}  # Linear module -> quantized?
    for o in outputs:
        packed = o.name.endswith(".weight_packed")  # int4/int8 pack-quantized (formats/compressed_tensors_int.py)
        if (packed or o.name.endswith(".weight")) and len(o.shape) == 2:
            mod = o.name.rsplit(".", 1)[0]
            if "norm" in mod.rsplit(".", 1)[-1] or "embed_tokens" in mod:
                continue
            modules[mod] = packed or o.dtype == "F8_E4M3"
            if modules[mod] and f"{mod}.weight_scale" not in names:
                raise PlanError(f"internal: {mod} is quantized without a weight_scale")
            if not modules[mod] and not _ignored(mod, ignore):
                raise PlanError(f"{mod} stays BF16 but is not in the quantization_config ignore list; "
                                "vLLM would look for its weight_scale")
    for entry in ignore:
        if not any(_ignored(m, [entry]) for m in modules):
            raise PlanError(f"ignore entry {entry!r} matches no Linear module of this model")
    for mod in modules:
        parent, _, leaf = mod.rpartition(".")
        for group in _VLLM_FUSED:
            if leaf in group:
                states = {modules.get(f"{parent}.{p}") for p in group} - {None}
                if len(states) > 1:
                    raise PlanError(f"{parent}: {'/'.join(group)} must be quantized alike (vLLM fuses them)",
                                    hint="adjust --ignore so the whole group is kept or quantized")
    experts: dict[str, dict[int, set[str]]] = {}
    for name in names:
        pe = parse_per_expert(name)
        if pe is not None and pe.leaf in ("weight", "weight_packed"):
            experts.setdefault(pe.experts_prefix, {}).setdefault(pe.expert, set()).add(pe.proj)
    for prefix, by_expert in experts.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            raise PlanError(f"{prefix}: per-expert keys are not numbered 0..{len(by_expert) - 1}")
        for e, projs in by_expert.items():
            if projs != {"gate_proj", "up_proj", "down_proj"}:
                raise PlanError(f"{prefix}.{e}: expected gate_proj, up_proj and down_proj, found {sorted(projs)}")
