"""Writes that fail part-way (ENOSPC, EIO) through the CLI: one-line error, exit 1, nothing complete-looking, and
`--resume` finishes with output bit-identical to an uninterrupted run.

Faults are injected where the bytes of the destination are written: the shard files ShardFile writes
(llama4ctl.exec.writer's `open`), the kernel-side copies (`os.copy_file_range`, and the `os.write` fallback),
metadata and progress files (`Path.write_text`), copied extras (`shutil.copyfile`) and `os.fsync`, each only
for files inside the hidden `.DST.partial` directory. A failing write first writes what fits, like a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil

import pytest
from typer.testing import CliRunner

from llama4ctl.cli.app import app
from llama4ctl.exec import writer
from tests.crashdriver import assert_same_output, check_after_kill

SHARD = ["--max-shard-size", "40KB", "--workers", "2"]
QUANT = ["--fp8", "--max-shard-size", "60KB", "--device", "cpu", "--workers", "2"]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Faults:
    """A byte budget for everything written under a .partial directory; past it, OSError(err)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int | None = None, err: int = errno.ENOSPC,
                 fsync_of: str | None = None):
        self.budget, self.err, self.fsync_of = budget, err, fsync_of
        self.failures = 0
        real_open, real_cfr, real_write = open, os.copy_file_range, os.write
        real_write_text, real_copyfile, real_fsync = pathlib.Path.write_text, shutil.copyfile, os.fsync
        faults = self

        class FailingFile:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                view = memoryview(data).cast("B")
                n = faults.take(len(view))
                if n < len(view):
                    self._f.write(view[:n])
                    faults.fail()
                return self._f.write(view)

            def __getattr__(self, name):
                return getattr(self._f, name)

        def failing_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return FailingFile(f) if "w" in mode and ".partial" in str(file) else f

        def copy_file_range(src, dst, count, offset_src=None, *args):
            if ".partial" not in _fd_path(dst):
                return real_cfr(src, dst, count, offset_src, *args)
            n = faults.take(count)
            if n == 0:
                faults.fail()
            return real_cfr(src, dst, n, offset_src, *args)

        def write(fd, data):
            if ".partial" not in _fd_path(fd):
                return real_write(fd, data)
            n = faults.take(len(data))
            if n == 0:
                faults.fail()
            return real_write(fd, memoryview(data)[:n])

        def write_text(self, text, *args, **kwargs):
            if ".partial" not in str(self):
                return real_write_text(self, text, *args, **kwargs)
            n = faults.take(len(text.encode()))
            if n < len(text.encode()):
                real_write_text(self, text.encode()[:n].decode(errors="ignore"))
                faults.fail()
            return real_write_text(self, text, *args, **kwargs)

        def copyfile(src, dst, *args, **kwargs):
            if ".partial" in str(dst) and faults.take(os.path.getsize(src)) < os.path.getsize(src):
                faults.fail()
            return real_copyfile(src, dst, *args, **kwargs)

        def fsync(fd):
            if faults.fsync_of and _fd_path(fd).endswith(faults.fsync_of) and ".partial" in _fd_path(fd):
                faults.fail()
            return real_fsync(fd)

        monkeypatch.setattr(writer, "open", failing_open, raising=False)
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
        monkeypatch.setattr(shutil, "copyfile", copyfile)
        monkeypatch.setattr(os, "fsync", fsync)

    def take(self, n: int) -> int:
        if self.budget is None:
            return n
        n = min(n, self.budget)
        self.budget -= n
        return n

    def fail(self) -> None:
        self.failures += 1
        raise OSError(self.err, os.strerror(self.err))


def cli(*args) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def refs(scout_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fault-refs")
    sizes = {}
    for kind, extra in (("shard", SHARD), ("quantize", QUANT)):
        code, _, err = cli(kind, scout_dir, out / kind, *extra, "-q")
        assert code == 0, err
        sizes[kind] = sum(p.stat().st_size for p in (out / kind).iterdir())
    return out, sizes


def _check_failed_run(code, stdout, stderr, dst, ref, json_mode, message):
    assert code == 1 and "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "--resume" in lines[1]
    if json_mode:
        assert json.loads(stdout)["error"]["message"].startswith("write failed")
    assert not dst.exists(), "a failed run must not leave a complete-looking destination"
    assert check_after_kill(dst, ref) == "partial"


@pytest.mark.parametrize("kind", ["shard", "quantize"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 0.97, 0.999])
def test_no_space_part_way_then_resume_is_bit_identical(scout_dir, tmp_path, monkeypatch, refs, kind, fraction):
    out, sizes = refs
    extra = SHARD if kind == "shard" else QUANT
    dst = tmp_path / "out"
    faults = Faults(monkeypatch, budget=int(fraction * sizes[kind]))
    json_mode = fraction in (0.3, 0.999)
    code, stdout, stderr = cli(kind, scout_dir, dst, *extra, *(["--json"] if json_mode else []))
    assert faults.failures >= 1
    _check_failed_run(code, stdout, stderr, dst, out / kind, json_mode, "write failed: No space left on device")
    monkeypatch.undo()
    code, stdout, stderr = cli(kind, scout_dir, dst, *extra, "--resume", "--json")
    assert code == 0, stderr
    assert_same_output(dst, out / kind)
    assert not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("kind", ["shard", "quantize"])
def test_io_error_on_write_then_resume_is_bit_identical(scout_dir, tmp_path, monkeypatch, refs, kind):
    out, sizes = refs
    extra = SHARD if kind == "shard" else QUANT
    dst = tmp_path / "out"
    Faults(monkeypatch, budget=sizes[kind] // 2, err=errno.EIO)
    code, stdout, stderr = cli(kind, scout_dir, dst, *extra)
    _check_failed_run(code, stdout, stderr, dst, out / kind, False, "write failed: Input/output error")
    monkeypatch.undo()
    assert cli(kind, scout_dir, dst, *extra, "--resume")[0] == 0
    assert_same_output(dst, out / kind)


def test_io_error_in_the_final_fsync_keeps_every_finished_shard(scout_dir, tmp_path, monkeypatch, refs):
    """The commit's fsync pass fails: the progress file must survive it, so --resume rewrites no shard."""
    out, _ = refs
    dst = tmp_path / "out"
    Faults(monkeypatch, err=errno.EIO, fsync_of="llama4ctl.json")
    code, stdout, stderr = cli("shard", scout_dir, dst, *SHARD)
    _check_failed_run(code, stdout, stderr, dst, out / "shard", False, "write failed: Input/output error")
    monkeypatch.undo()
    code, stdout, _ = cli("shard", scout_dir, dst, *SHARD, "--resume", "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["shards_written"] == 0 and doc["shards_skipped"] == len(doc["plan"]["shards"]) == 20
    assert_same_output(dst, out / "shard")


def test_no_space_for_the_metadata_then_resume_rewrites_no_shard(scout_dir, tmp_path, monkeypatch, refs):
    out, _ = refs
    shards = sum(p.stat().st_size for p in (out / "shard").glob("*.safetensors"))
    dst = tmp_path / "out"
    # all shard bytes fit, plus the progress saves (a few hundred bytes each); the index/config do not
    Faults(monkeypatch, budget=shards + 25 * 1500)
    code, stdout, stderr = cli("shard", scout_dir, dst, *SHARD)
    _check_failed_run(code, stdout, stderr, dst, out / "shard", False, "No space left on device")
    monkeypatch.undo()
    code, stdout, _ = cli("shard", scout_dir, dst, *SHARD, "--resume", "--json")
    assert code == 0 and json.loads(stdout)["shards_written"] == 0
    assert_same_output(dst, out / "shard")
