"""The quantization quality report: per-tensor dequantization error gathered while quantizing."""

from __future__ import annotations

from typing import Any

from llama4ctl.checkpoint.layout import component


def build_report(plan: Any, stats: dict[str, dict[str, float]], *, kept_modules: list[str],
                 worst_n: int = 10) -> dict[str, Any]:
    tensors = {name: {"component": component(name), **values} for name, values in sorted(stats.items())}
    components: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        c = components.setdefault(t["component"], {"tensors": 0, "mean_rel_error": 0.0, "max_rel_error": 0.0})
        c["tensors"] += 1
        c["mean_rel_error"] += t["rel_error"]
        c["max_rel_error"] = max(c["max_rel_error"], t.get("max_expert_rel_error", t["rel_error"]))
    for c in components.values():
        c["mean_rel_error"] /= max(1, c["tensors"])
    worst = sorted(tensors, key=lambda n: tensors[n].get("max_expert_rel_error", tensors[n]["rel_error"]),
                   reverse=True)[:worst_n]
    fmt = plan.format.describe()
    return {
        "format": fmt["format"],
        "scheme": fmt.get("scheme"),
        "backend": fmt.get("backend"),
        "ignore": fmt.get("ignore", []),
        "experts_only": fmt.get("experts_only", False),
        "kept_modules": kept_modules,
        "input_bytes": plan.source.total_bytes,
        "output_bytes": plan.total_bytes,
        "compression_ratio": plan.source.total_bytes / plan.total_bytes if plan.total_bytes else None,
        "components": components,
        "worst_tensors": [{"name": n, **tensors[n]} for n in worst],
        "tensors": tensors,
    }
