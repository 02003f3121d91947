"""Which tensors a quantizing format converts, and the module names it must list as kept.

Kept in BF16 by default: router, vision tower, multi-modal projector, lm_head, embeddings, norms. `--ignore`
adds regexes over module names (compressed-tensors' `re:` convention; the prefix is optional here), and
`--experts-only` keeps everything but the routed experts, as Meta's own FP8 release does.
"""

from __future__ import annotations

import re

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.checkpoint.header import FLOAT_DTYPES, TensorRef
from llama4ctl.checkpoint.layout import KEPT_IN_BF16, component, module_name, parse_fused_expert
from llama4ctl.errors import PlanError

LINEAR_COMPONENTS = frozenset({"attention", "dense_mlp", "shared_expert", "routed_experts"})


class Selection:
    def __init__(self, ignore: list[str] | tuple[str, ...] = (), experts_only: bool = False):
        self.patterns = []
        for p in ignore:
            body = p[3:] if p.startswith("re:") else p
            try:
                self.patterns.append(re.compile(body))
            except re.error as e:
                raise PlanError(f"invalid --ignore pattern {p!r}: {e}") from None
        self.ignore = list(ignore)
        self.experts_only = experts_only

    def ignored_by_pattern(self, module: str) -> bool:
        return any(p.match(module) for p in self.patterns)

    def quantizes(self, ref: TensorRef) -> bool:
        """True for weights this run converts (2-D Linear weights and fused/per-expert routed experts)."""
        if ref.dtype not in FLOAT_DTYPES:
            return False
        comp = component(ref.name)
        if comp not in LINEAR_COMPONENTS or (self.experts_only and comp != "routed_experts"):
            return False
        is_linear = ref.name.endswith(".weight") and len(ref.shape) == 2
        is_fused = parse_fused_expert(ref.name) is not None and len(ref.shape) == 3
        if not (is_linear or is_fused):
            return False
        return not self.ignored_by_pattern(module_name(ref.name))

    def kept_linear_modules(self, ckpt: Checkpoint, *, per_expert: bool) -> list[str]:
        """Full names of Linear-like modules left unquantized (what ignore lists must name)."""
        kept: list[str] = []
        for ref in ckpt.tensors:
            if ref.dtype not in FLOAT_DTYPES or self.quantizes(ref):
                continue
            comp = component(ref.name)
            fused = parse_fused_expert(ref.name)
            if fused is not None:
                if per_expert:
                    for e in range(ref.shape[0]):
                        kept.extend(n.rsplit(".", 1)[0] for n in fused.per_expert_weight_names(e))
                else:
                    kept.append(fused.experts_prefix)
                continue
            is_linear_weight = ref.name.endswith(".weight") and len(ref.shape) == 2
            if is_linear_weight and comp not in ("embed", "norm") and "norm" not in ref.name.rsplit(".", 2)[-2]:
                kept.append(module_name(ref.name))
        return sorted(dict.fromkeys(kept))

    def check_not_empty(self, ckpt: Checkpoint) -> None:
        if not any(self.quantizes(r) for r in ckpt.tensors):
            raise PlanError("nothing to quantize: every weight is kept (check --ignore / --experts-only)",
                            ckpt.source)


__all__ = ["KEPT_IN_BF16", "Selection"]
