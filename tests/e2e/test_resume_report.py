"""A resumed quantize reports every tensor, including those of the shards kept from the interrupted run; and
`--resume` on a complete output made with other options is refused instead of passing as done."""

import json

import pytest

from llama4ctl.cli.app import app  # noqa: F401 - registers the kernels through the formats
from llama4ctl.errors import OutputError
from llama4ctl.jobs import plan_quantize, quantize
from llama4ctl.plan import ops as ops_mod


def _report(dst):
    return json.loads((dst / "quantization_report.json").read_text())


@pytest.mark.parametrize("backend", ["llm-compressor", "fbgemm"])
def test_resumed_run_reports_the_tensors_of_kept_shards(maverick_dir, tmp_path, monkeypatch, backend):
    plan = plan_quantize(maverick_dir, backend=backend, max_shard_size="60KB")
    assert len(plan.shards) >= 3
    quantize(plan, tmp_path / "ref", device="cpu")

    kernel = "ct_fp8_unfuse" if backend == "llm-compressor" else "fbgemm_fp8_experts"
    real, calls = ops_mod.KERNELS[kernel], {"n": 0}

    def failing(ctx, op):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(5, "Input/output error")
        yield from real(ctx, op)

    monkeypatch.setitem(ops_mod.KERNELS, kernel, failing)
    with pytest.raises(OutputError, match="Input/output error"):
        quantize(plan, tmp_path / "out", device="cpu", workers=1)
    monkeypatch.undo()
    res = quantize(plan, tmp_path / "out", device="cpu", workers=1, resume=True)
    assert res["shards_skipped"] >= 1

    ref, got = _report(tmp_path / "ref"), _report(tmp_path / "out")
    assert got["tensors"] == ref["tensors"]
    assert got["components"] == ref["components"] and got["worst_tensors"] == ref["worst_tensors"]
    assert not (tmp_path / "out" / "stats.json").exists()


def test_resume_on_a_complete_output_made_otherwise_is_refused(maverick_dir, tmp_path):
    quantize(plan_quantize(maverick_dir), tmp_path / "out", device="cpu")
    same = quantize(plan_quantize(maverick_dir), tmp_path / "out", device="cpu", resume=True)
    assert same["already_complete"]
    with pytest.raises(OutputError, match="different source or different options"):
        quantize(plan_quantize(maverick_dir, scheme="FP8_BLOCK"), tmp_path / "out", device="cpu", resume=True)


def test_resume_on_a_finished_output_answers_without_importing_torch(maverick_dir, tmp_path):
    """A release pipeline re-runs every step; a finished quantize must answer at once (torch costs ~2 s to import)."""
    import subprocess
    import sys

    quantize(plan_quantize(maverick_dir), tmp_path / "out", device="cpu")
    probe = ("import sys; from llama4ctl.jobs import plan_quantize, quantize; "
             f"r = quantize(plan_quantize({str(maverick_dir)!r}), {str(tmp_path / 'out')!r}, resume=True); "
             "print(r['already_complete'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
