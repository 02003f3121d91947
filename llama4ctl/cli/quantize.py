"""`llama4ctl quantize SRC [DST] --fp8|--int4|--int8`: streamed quantization, experts done right, atomic and resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import (DebugOpt, DryRunOpt, JsonOpt, MaxShardSizeOpt, OverwriteOpt, QuietOpt,
                                    ResumeOpt, WorkersOpt)
from llama4ctl.cli._output import Output
from llama4ctl.cli.shard import render_plan

HELP = """Quantize a checkpoint tensor by tensor (fused experts expert by expert), with bounded memory.

--backend llm-compressor (default) writes compressed-tensors (vLLM-servable, loads on CPU) with experts
unfused per expert; --backend fbgemm writes transformers' fbgemm_fp8 format (experts fused; needs an H100-class
GPU to load). Kept in BF16: router, vision tower, projector, lm_head, embeddings, norms.

--int4 / --int8 (Scout): --backend llm-compressor (default) writes compressed-tensors pack-quantized W4A16
(symmetric int4, --group-size 128) / W8A16, data-free round-to-nearest, experts unfused per expert (vLLM and
transformers load it); --backend bnb writes a pre-quantized bitsandbytes NF4 (double quant unless
--no-double-quant) / LLM.int8 checkpoint with every language-model Linear quantized, experts included.

--recipe runs llm-compressor's oneshot instead, which loads the WHOLE model into memory (~800 GB for
Maverick): use it only for calibration-based schemes (e.g. GPTQ); the streaming path is the better choice for
data-free FP8, whatever the model size.
"""


def quantize_cmd(
    src: Annotated[str, typer.Argument(help="Source checkpoint directory (BF16).")],
    dst: Annotated[str | None, typer.Argument(help="Destination (default: <name>-FP8-DYNAMIC, <name>-W4A16-G128, <name>-W8A16, <name>-BNB-NF4, <name>-BNB-INT8 … in the current directory).")] = None,
    fp8: Annotated[bool, typer.Option("--fp8", help="FP8 E4M3 weights.")] = False,
    int4: Annotated[bool, typer.Option("--int4", help="int4 weights (Scout).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="int8 weights (Scout).")] = False,
    backend: Annotated[str, typer.Option("--backend", help="llm-compressor (compressed-tensors), fbgemm (FP8) or bnb (bitsandbytes, int4/int8).")] = "llm-compressor",
    scheme: Annotated[str | None, typer.Option("--scheme", help="FP8_DYNAMIC (default) or FP8_BLOCK for llm-compressor; NF4 (default) or FP4 for --int4 --backend bnb.")] = None,
    group_size: Annotated[int, typer.Option("--group-size", help="int4/int8 (llm-compressor): input columns per scale; -1 for one scale per output channel.")] = 128,
    double_quant: Annotated[bool, typer.Option("--double-quant/--no-double-quant", help="--int4 --backend bnb: quantize the NF4 block scales too (~0.52 instead of ~0.56 bytes per weight).")] = True,
    recipe: Annotated[str | None, typer.Option("--recipe", help="llm-compressor recipe for oneshot (a YAML path or a shipped name: maverick-fp8-dynamic, scout-fp8-block, scout-w4a16-gptq); loads the whole model.")] = None,
    calibration_data: Annotated[Path | None, typer.Option("--calibration-data", help="Text file, one calibration sample per line (recipes that calibrate, e.g. GPTQ).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Calibration samples for --recipe.")] = 256,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Regex over module names to keep in BF16 (repeatable; 're:' prefix optional).")] = None,
    experts_only: Annotated[bool, typer.Option("--experts-only", help="Quantize only the routed experts.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (auto: every visible GPU, one worker each).")] = "auto",
    workers: WorkersOpt = 2,
    max_shard_size: MaxShardSizeOpt = "5GB",
    compare_logits: Annotated[bool, typer.Option("--compare-logits", help="Load the result and compare logits with the source on a fixed prompt.")] = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    if sum((fp8, int4, int8)) != 1:
        raise typer.BadParameter("choose exactly one of --fp8, --int4, --int8")
    with handled(out):
        from llama4ctl import jobs
        from llama4ctl.schemas import document

        method = "fp8" if fp8 else ("int4" if int4 else "int8")
        if recipe is not None:
            from llama4ctl.oneshot import run_oneshot

            if resume or dry_run:
                raise typer.BadParameter("--recipe runs oneshot on the whole model: no --resume or --dry-run")
            target = Path(dst) if dst else Path.cwd() / f"{Path(src.rstrip('/')).name}-{Path(recipe).stem}"
            res = run_oneshot(src, target, recipe, calibration_data=calibration_data, num_samples=num_samples,
                              overwrite=overwrite, command=["llama4ctl", *sys.argv[1:]])
            out.result(document("quantize_oneshot", res),
                       lambda c: c.print(f"wrote {res['destination']} with {res['recipe']} in {res['seconds']:.1f} s"))
            return
        plan = jobs.plan_quantize(src, method=method, backend=backend, scheme=scheme, ignore=ignore or [],
                                  experts_only=experts_only, max_shard_size=max_shard_size,
                                  group_size=group_size, double_quant=double_quant)
        target = Path(dst) if dst else jobs.default_destination(src, plan.format)
        if dry_run:
            summary = {**plan.summary(), "destination": str(target)}
            out.result(document("plan", summary), lambda c: render_plan(c, summary, plan))
            return
        res = jobs.quantize(plan, target, device=device, workers=workers, overwrite=overwrite, resume=resume,
                            progress=out.progress(), command=["llama4ctl", *sys.argv[1:]])
        if compare_logits and not res["already_complete"]:
            from llama4ctl.generate import compare_logits as compare

            res["compare_logits"] = compare(src, target)
        out.result(document("quantize", res), lambda c: render(c, res))


quantize_cmd.__doc__ = HELP


def render(console: Any, res: dict[str, Any]) -> None:
    from rich.table import Table

    if res["already_complete"]:
        console.print(f"{res['destination']} is already complete; nothing to do")
        return
    plan = res["plan"]
    ratio = plan["input_bytes"] / plan["output_bytes"] if plan["output_bytes"] else 0
    console.print(f"wrote {res['destination']}: {plan['output_bytes'] / 1e9:.3f} GB ({ratio:.2f}× smaller) in "
                  f"{res['shards_written']} shard(s), {res['seconds']:.2f} s on {', '.join(res['devices'])}")
    report = res.get("report")
    if report:
        table = Table(title="worst tensors (relative dequantization error)", title_justify="left")
        table.add_column("tensor")
        table.add_column("rel. error", justify="right")
        for t in report["worst_tensors"][:5]:
            table.add_row(t["name"], f"{t.get('max_expert_rel_error', t['rel_error']):.4f}")
        console.print(table)
    cmp = res.get("compare_logits")
    if cmp:
        console.print(f"logits vs source: relative error {cmp['rel_error']:.4f}, "
                      f"top-1 agreement {cmp['top1_agreement']:.0%} ({cmp['device']})")
