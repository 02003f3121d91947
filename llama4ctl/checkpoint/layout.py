"""Everything llama4ctl knows about Llama 4's tensor names, components and fused expert geometry.

Fused routed experts are stored input-major (transposed relative to nn.Linear):
  experts.gate_up_proj [E, H, 2I]   gate = first half of the last dim, up = second half
  experts.down_proj    [E, I, H]
The per-expert layout (vLLM, compressed-tensors, `for_llm_compressor`) is nn.Linear-shaped:
  experts.{e}.gate_proj.weight [I, H], experts.{e}.up_proj.weight [I, H], experts.{e}.down_proj.weight [H, I]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

COMPONENTS = (
    "vision", "projector", "embed", "attention", "dense_mlp", "shared_expert",
    "routed_experts", "router", "norm", "lm_head", "other",
)
KEPT_IN_BF16 = frozenset({"router", "vision", "projector", "lm_head", "embed", "norm"})

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_FUSED = re.compile(r"^(?P<prefix>.*\.feed_forward\.experts)\.(?P<proj>gate_up_proj|down_proj)(?P<suffix>_scale)?$")
_PER_EXPERT = re.compile(
    r"^(?P<prefix>.*\.feed_forward\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.(?P<leaf>.+)$"
)
# Suffixes of tensors that are quantization metadata, not parameters.
_AUX_SUFFIXES = (
    "weight_scale", "input_scale", "output_scale", "weight_zero_point", "input_zero_point", "weight_g_idx",
    "weight_shape", "weight_global_scale", "_scale", "absmax", "quant_map", "nested_absmax", "nested_quant_map",
    "SCB", "weight_format", "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4",
)


def component(name: str) -> str:
    """Classify a tensor name into one of COMPONENTS (works for both multimodal and text-only prefixes)."""
    if name.startswith("vision_model."):
        return "vision"
    if name.startswith("multi_modal_projector."):
        return "projector"
    if name.startswith(("lm_head.", "language_model.lm_head.")):
        return "lm_head"
    if "embed_tokens" in name:
        return "embed"
    if ".feed_forward.experts." in name:
        return "routed_experts"
    if ".feed_forward.router." in name:
        return "router"
    if ".feed_forward.shared_expert." in name:
        return "shared_expert"
    if ".feed_forward." in name:
        return "dense_mlp"
    if ".self_attn." in name:
        return "attention"
    if "layernorm" in name or name.endswith(("model.norm.weight", ".norm.weight")):
        return "norm"
    return "other"


def layer_index(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m and not name.startswith("vision_model.") else None


def is_aux_tensor(name: str) -> bool:
    """True for scales, zero points and quantization state: stored next to weights but not parameters."""
    leaf = name.rsplit(".", 1)[-1]
    return name.endswith(_AUX_SUFFIXES) or leaf.endswith("_scale") or ".quant_state." in name


def module_name(name: str) -> str:
    """The module a tensor belongs to (what ignore lists and modules_to_not_convert name)."""
    m = _FUSED.match(name)
    if m:
        return m.group("prefix")
    m = _PER_EXPERT.match(name)
    if m:
        return f"{m.group('prefix')}.{m.group('expert')}.{m.group('proj')}"
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class FusedExpert:
    """A fused routed-expert tensor: `proj` is gate_up_proj or down_proj; `experts_prefix` ends in `.experts`."""

    experts_prefix: str
    proj: str

    def per_expert_weight_names(self, e: int) -> tuple[str, ...]:
        if self.proj == "gate_up_proj":
            return (f"{self.experts_prefix}.{e}.gate_proj.weight", f"{self.experts_prefix}.{e}.up_proj.weight")
        return (f"{self.experts_prefix}.{e}.down_proj.weight",)


def parse_fused_expert(name: str) -> FusedExpert | None:
    m = _FUSED.match(name)
    if not m or m.group("suffix"):
        return None
    return FusedExpert(m.group("prefix"), m.group("proj"))


@dataclass(frozen=True)
class PerExpert:
    experts_prefix: str
    expert: int
    proj: str  # gate_proj | up_proj | down_proj
    leaf: str  # weight, weight_scale, ...


def parse_per_expert(name: str) -> PerExpert | None:
    m = _PER_EXPERT.match(name)
    if not m:
        return None
    return PerExpert(m.group("prefix"), int(m.group("expert")), m.group("proj"), m.group("leaf"))


def fused_name(experts_prefix: str, proj: str) -> str:
    return f"{experts_prefix}.{proj}"


def to_text_only_name(name: str) -> str | None:
    """Map a multimodal key to the Llama4ForCausalLM key; None for vision/projector tensors."""
    if name.startswith(("vision_model.", "multi_modal_projector.")):
        return None
    if name.startswith("language_model."):
        return name[len("language_model."):]
    return name


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TextConfig:
    """The Llama 4 text config facts the toolkit needs, derived the way transformers derives them."""

    hidden_size: int
    expert_intermediate_size: int
    mlp_intermediate_size: int
    num_experts: int
    num_layers: int
    vocab_size: int
    moe_layers: tuple[int, ...]
    nope_layers: tuple[int, ...]
    use_qk_norm: bool
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def family(self) -> str:
        if self.hidden_size == 5120 and self.num_layers == 48:
            return {16: "scout", 128: "maverick"}.get(self.num_experts, "unknown")
        return "unknown"

    @property
    def moe_pattern(self) -> str:
        if len(self.moe_layers) == self.num_layers:
            return "every-layer"  # Scout-like
        return "interleaved" if self.moe_layers else "dense"  # Maverick-like


def normalize_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Fix legacy fields transformers 5.x rejects; returns (config, notes on what changed)."""
    notes: list[str] = []
    cfg = dict(config)
    targets = [cfg]
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"] = dict(cfg["text_config"])
        targets.append(cfg["text_config"])
    for t in targets:
        v = t.get("attn_temperature_tuning")
        if isinstance(v, int) and not isinstance(v, bool):
            t["attn_temperature_tuning"] = bool(v)
            notes.append(f"attn_temperature_tuning {v} -> {bool(v)}")
    return cfg, notes


def text_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else config


def parse_text_config(config: dict[str, Any]) -> TextConfig:
    """Raises KeyError/TypeError/ValueError on missing or malformed fields (the caller names the file)."""
    tc = text_config_dict(config)
    n_layers = int(tc["num_hidden_layers"])
    if not 0 < n_layers <= 10_000:  # lists of layers are built from it: bound it before allocating
        raise ValueError(f"num_hidden_layers={n_layers} is out of range")
    step = int(tc.get("interleave_moe_layer_step", 1))
    moe = tc.get("moe_layers")
    if moe is None:
        moe = list(range(step - 1, n_layers, step)) if step > 0 else []
    no_rope = tc.get("no_rope_layers")
    if not no_rope:
        interval = int(tc.get("no_rope_layer_interval", 4))
        if interval <= 0:
            raise ValueError(f"no_rope_layer_interval={interval} is not positive")
        no_rope = [int((i + 1) % interval != 0) for i in range(n_layers)]
    return TextConfig(
        hidden_size=int(tc["hidden_size"]),
        expert_intermediate_size=int(tc["intermediate_size"]),
        mlp_intermediate_size=int(tc.get("intermediate_size_mlp", tc["intermediate_size"])),
        num_experts=int(tc.get("num_local_experts", 0)),
        num_layers=n_layers,
        vocab_size=int(tc["vocab_size"]),
        moe_layers=tuple(int(i) for i in moe),
        nope_layers=tuple(i for i, r in enumerate(no_rope) if not r),
        use_qk_norm=bool(tc.get("use_qk_norm", False)),
        raw=tc,
    )


def text_only_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config.json of a Llama4ForCausalLM made from a multimodal config (for --drop-vision)."""
    tc = dict(text_config_dict(config))
    tc["architectures"] = ["Llama4ForCausalLM"]
    tc["model_type"] = "llama4_text"
    for key in ("torch_dtype", "dtype", "transformers_version", "quantization_config", "tie_word_embeddings"):
        if key in config and key not in tc:
            tc[key] = config[key]
    return tc
