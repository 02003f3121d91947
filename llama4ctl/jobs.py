"""The library calls behind the commands that write weights: open -> plan -> (dry run | execute)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.errors import CheckpointError
from llama4ctl.plan.planner import Plan, build_plan
from llama4ctl.plan.sharding import parse_size
from llama4ctl.progress import Progress

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/")) and ".." not in text


def open_local(src: str | Path) -> Checkpoint:
    p = Path(src)
    if not p.exists() and looks_like_repo_id(str(src)):
        raise CheckpointError("no such local checkpoint (Hub repo ids must be downloaded first)", src,
                              hint=f"run `llama4ctl download {src}` first")
    return Checkpoint.open(p)


def open_any(src: str, *, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """A local checkpoint, or a Hub repo's headers only (no weights fetched)."""
    if Path(src).exists() or not looks_like_repo_id(src):
        return Checkpoint.open(src)
    from llama4ctl.hub import remote_checkpoint

    return remote_checkpoint(src, revision=revision, token=token)


def plan_shard(src: str | Path, *, max_shard_size: str | int = "5GB", dtype: str | None = None,
               experts: str = "keep", drop_vision: bool = False) -> Plan:
    from llama4ctl.formats.bf16 import UnquantizedFormat

    size = parse_size(max_shard_size)
    fmt = UnquantizedFormat(dtype=dtype, experts=experts)
    return build_plan(open_local(src), fmt, max_shard_size=size, drop_vision=drop_vision)


def execute_plan(plan: Plan, dst: str | Path, *, overwrite: bool = False, resume: bool = False,
                 workers: int = 1, progress: Progress | None = None, command: list[str] | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    from llama4ctl.exec.executor import execute

    r = execute(plan, dst, overwrite=overwrite, resume=resume, workers=workers, progress=progress,
                command=command, **kwargs)
    return {
        "destination": str(r.dst),
        "already_complete": r.already_complete,
        "bytes_written": r.bytes_written,
        "shards_written": r.shards_written,
        "shards_skipped": r.shards_skipped,
        "seconds": round(r.seconds, 3),
        "shard_devices": r.shard_devices,
        "plan": plan.summary(),
    }


# ------------------------------------------------------------------------------------------- quantize

BACKENDS = ("llm-compressor", "fbgemm", "bnb")


def make_quant_format(*, method: str, backend: str, scheme: str | None, ignore: list[str],
                      experts_only: bool, group_size: int = 128, double_quant: bool = True) -> Any:
    from llama4ctl.errors import PlanError
    from llama4ctl.formats.selection import Selection

    selection = Selection(ignore, experts_only)
    if backend not in BACKENDS:
        raise PlanError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if method in ("int4", "int8"):
        return make_int_format(method=method, backend=backend, scheme=scheme, selection=selection,
                               group_size=group_size, double_quant=double_quant)
    if method != "fp8":
        raise PlanError(f"unknown quantization {method!r}; choose fp8, int4 or int8")
    if backend == "bnb":
        raise PlanError("--backend bnb writes int4 (NF4) or int8 (LLM.int8), not FP8", hint="use --int4 or --int8")
    if group_size != 128:
        raise PlanError("--group-size applies to --int4/--int8; FP8 uses --scheme (FP8_DYNAMIC per channel, "
                        "FP8_BLOCK 128x128)")
    if backend == "fbgemm":
        if scheme not in (None, "FP8_ROWWISE"):
            raise PlanError(f"--scheme {scheme} is not available with --backend fbgemm (it is per-row FP8)")
        from llama4ctl.formats.fbgemm_fp8 import FbgemmFp8Format

        return FbgemmFp8Format(selection)
    from llama4ctl.formats.compressed_tensors import CompressedTensorsFp8Format

    return CompressedTensorsFp8Format(scheme or "FP8_DYNAMIC", selection)


def make_int_format(*, method: str, backend: str, scheme: str | None, selection: Any, group_size: int = 128,
                    double_quant: bool = True) -> Any:
    """--int4/--int8: compressed-tensors pack-quantized W4A16/W8A16 (llm-compressor) or bitsandbytes NF4/INT8."""
    from llama4ctl.errors import PlanError

    bits = 4 if method == "int4" else 8
    if backend == "fbgemm":
        raise PlanError(f"--backend fbgemm writes FP8 only; --{method} takes --backend llm-compressor or bnb")
    if backend == "bnb":
        quant_type = (scheme or "NF4").lower() if bits == 4 else "int8"
        if bits == 8 and scheme not in (None, "INT8", "LLM.int8"):
            raise PlanError(f"--scheme {scheme} is not available with --int8 --backend bnb (it is LLM.int8)")
        if group_size != 128:
            raise PlanError("--group-size does not apply to --backend bnb (its blocks are 64 values)")
        from llama4ctl.formats.bnb import BitsAndBytesFormat

        return BitsAndBytesFormat(bits, quant_type, double_quant, selection)
    expected = f"W{bits}A16"
    if scheme not in (None, expected):
        raise PlanError(f"--scheme {scheme} is not available with --{method}; it writes {expected}")
    from llama4ctl.formats.compressed_tensors_int import CompressedTensorsIntFormat

    return CompressedTensorsIntFormat(expected, group_size, selection)


def default_destination(src: str | Path, fmt: Any) -> Path:
    return Path.cwd() / f"{Path(str(src).rstrip('/')).name}-{fmt.default_suffix()}"


def plan_quantize(src: str | Path, *, method: str = "fp8", backend: str = "llm-compressor",
                  scheme: str | None = None, ignore: list[str] | None = None, experts_only: bool = False,
                  max_shard_size: str | int = "5GB", group_size: int = 128, double_quant: bool = True) -> Plan:
    fmt = make_quant_format(method=method, backend=backend, scheme=scheme, ignore=list(ignore or []),
                            experts_only=experts_only, group_size=group_size, double_quant=double_quant)
    return build_plan(open_local(src), fmt, max_shard_size=parse_size(max_shard_size))


def resolve_devices(device: str) -> tuple[str, ...]:
    """auto: every visible GPU (one worker each) when CUDA is available, else the CPU."""
    from llama4ctl.errors import PlanError

    if device not in ("auto", "cpu", "cuda"):
        raise PlanError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device == "cpu":
        return ("cpu",)
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            raise PlanError("--device cuda was asked for but no CUDA GPU is available")
        return ("cpu",)
    return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))


def quantize(plan: Plan, dst: str | Path, *, device: str = "auto", workers: int = 1,
             overwrite: bool = False, resume: bool = False, progress: Progress | None = None,
             command: list[str] | None = None) -> dict[str, Any]:
    from llama4ctl.quality import build_report
    from llama4ctl.schemas import document

    import threading

    if resume and not overwrite and (Path(dst) / "llama4ctl.json").is_file():
        # a finished output: say so (or refuse it if made with other options) before torch is imported (~2 s)
        res = execute_plan(plan, dst, resume=True, progress=progress, command=command)
        if res["already_complete"]:
            return {**res, "devices": []}
    devices = resolve_devices(device)
    report: dict[str, Any] = {}
    warm_up = threading.Thread(target=plan.format.warm_up, daemon=True)
    warm_up.start()

    def write_report(out: Any, recorder: Any) -> None:
        qc = (plan.config or {}).get("quantization_config") or {}
        kept = qc.get("ignore") or qc.get("modules_to_not_convert") or qc.get("llm_int8_skip_modules") or []
        report.update(build_report(plan, recorder.stats, kept_modules=kept))
        out.write_json("quantization_report.json", document("quantization_report", report))

    try:
        res = execute_plan(plan, dst, overwrite=overwrite, resume=resume, workers=workers, progress=progress,
                           command=command, devices=devices, extra_outputs=write_report)
    finally:
        warm_up.join()  # never leave an import half done behind the caller (it may import the same modules)
    res["devices"] = list(devices)
    if report:
        res["report"] = {k: report[k] for k in ("format", "scheme", "backend", "compression_ratio", "components",
                                                "worst_tensors")}
    return res
