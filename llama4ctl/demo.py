"""The built-in demo: a tiny Llama-4-shaped checkpoint run through every command that is built."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_demo(workdir: str | Path, *, shape: str = "maverick", log: Callable[[str], None] = print) -> dict[str, Any]:
    from llama4ctl.fixtures import build_tiny_checkpoint
    from llama4ctl.inspection import summarize
    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.jobs import execute_plan, plan_quantize, plan_shard, quantize

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"tiny-llama4-{shape}"
    if src.exists():
        shutil.rmtree(src)
    log(f"building a tiny {shape}-shaped Llama 4 checkpoint in {src}")
    build_tiny_checkpoint(src, shape=shape)
    steps: list[dict[str, Any]] = []

    info = summarize(Checkpoint.open(src))
    steps.append({"step": "inspect", "result": f"{info['num_parameters']:,} parameters, "
                  f"{info['num_experts']} experts, MoE layers {info['moe_layers']}, {info['shards']} shards"})

    unfused = work / f"{src.name}-unfused"
    r = execute_plan(plan_shard(src, max_shard_size="200KB", experts="unfused"), unfused, overwrite=True)
    steps.append({"step": "shard --experts unfused",
                  "result": f"{r['plan']['num_output_tensors']} tensors in {r['shards_written']} shards -> {unfused}"})

    text = work / f"{src.name}-text"
    r = execute_plan(plan_shard(unfused, experts="fused", drop_vision=True), text, overwrite=True)
    steps.append({"step": "shard --experts fused --drop-vision",
                  "result": f"text-only checkpoint, {r['plan']['num_output_tensors']} tensors -> {text}"})

    for backend in ("llm-compressor", "fbgemm"):
        plan = plan_quantize(src, backend=backend, max_shard_size="500KB")
        dst = work / f"{src.name}-{plan.format.default_suffix()}"
        r = quantize(plan, dst, device="cpu", overwrite=True)
        worst = r["report"]["worst_tensors"][0]
        err = worst.get("max_expert_rel_error", worst["rel_error"])
        steps.append({"step": f"quantize --fp8 --backend {backend}",
                      "result": f"{r['plan']['output_bytes']:,} bytes ({r['report']['compression_ratio']:.2f}× "
                                f"smaller), worst relative error {err:.4f} -> {dst}"})
        q = summarize(Checkpoint.open(dst))["quantization"]
        steps.append({"step": f"inspect {dst.name}", "result": f"detected {q['format']} ({q['scheme']})"})
    return {"checkpoint": str(src), "steps": steps}
