"""Processes SIGKILLed at many points, and two writers racing for one destination (tests/crashdriver.py).

Each kill point is a real process (forked from a driver that has paid the imports once) killed with SIGKILL:
at a chosen writer event (shard open, chunk write — half written when torn —, close, rename, fsync, progress
save, metadata, commit) or at a random instant. After every kill: no destination, or a complete and correct
one; the progress file never claims a shard that differs from the uninterrupted run; `--resume` finishes with
output bit-identical to the uninterrupted run. CI runs ~26 kill points; `pytest --long` runs hundreds.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.crashdriver import Driver, assert_same_output, kill_campaign

SHARD = ["--max-shard-size", "40KB", "-q", "--workers", "2"]
QUANT = ["--fp8", "--max-shard-size", "60KB", "--device", "cpu", "-q", "--workers", "2"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory, scout_dir):
    work = tmp_path_factory.mktemp("crash")
    with Driver(work / "jobs") as d:
        for cmd, extra in (("quantize", QUANT), ("shard", SHARD)):  # warm the driver once
            r = d.warm([cmd, scout_dir, work / f"warm-{cmd}", *extra])
            assert r["code"] == 0, r
        yield d


def _command(kind, src):
    return (lambda dst: ["shard", src, dst, *SHARD]) if kind == "shard" else \
        (lambda dst: ["quantize", src, dst, *QUANT])


@pytest.mark.parametrize("kind", ["shard", "quantize"])
def test_sigkill_at_many_points_then_resume_is_bit_identical(driver, scout_dir, tmp_path, kind, long_run):
    command = _command(kind, scout_dir)
    ref = tmp_path / "ref"
    r = driver.run(command(ref), {"kind": "count"})
    assert r["code"] == 0 and r["events"] > 100, r
    seed = int(os.environ.get("LLAMA4CTL_FUZZ_SEED", random.randrange(2**32)))
    event_kills = 150 if long_run else 10
    stats = kill_campaign(driver, command, tmp_path, ref, names=r["names"], seconds=r["seconds"], seed=seed,
                          event_kills=event_kills, timed_kills=40 if long_run else 2)
    print(f"{kind}: seed {seed}, {r['events']} events per run: {stats}")
    # every event kill lands (a run may pass a few events fewer: fsyncs run in a background thread); timed
    # kills may come after a short run has finished
    assert stats["killed"] >= 0.9 * event_kills


def test_resumed_quantization_report_covers_every_tensor(driver, scout_dir, tmp_path):
    command = _command("quantize", scout_dir)
    ref, dst = tmp_path / "ref", tmp_path / "out"
    assert driver.run(command(ref))["code"] == 0
    assert driver.run(command(dst), {"kind": "event", "at": 300})["status"] == "killed"  # some shards finished
    assert driver.run([*command(dst), "--resume"])["code"] == 0
    assert (dst / "quantization_report.json").read_text() == (ref / "quantization_report.json").read_text()


def test_a_kill_just_before_the_rename_keeps_the_report(driver, scout_dir, tmp_path):
    """Killed after the report is written, before the rename: the kept per-shard statistics must still be there
    (they once were deleted before OutputDir.commit, and the resumed report then listed no tensor)."""
    command = _command("quantize", scout_dir)
    ref, dst = tmp_path / "ref", tmp_path / "out"
    counted = driver.run(command(ref), {"kind": "count"})
    at = counted["names"].index("OutputDir.commit") + 1
    assert driver.run(command(dst), {"kind": "event", "at": at})["event_name"] == "OutputDir.commit"
    assert driver.run([*command(dst), "--resume"])["code"] == 0
    assert (dst / "quantization_report.json").read_text() == (ref / "quantization_report.json").read_text()


def test_a_killed_run_is_refused_without_resume_and_its_lock_is_free(driver, scout_dir, tmp_path):
    command = _command("quantize", scout_dir)
    dst = tmp_path / "out"
    assert driver.run(command(dst), {"kind": "event", "at": 120})["status"] == "killed"
    again = driver.run(command(dst))
    assert again["code"] == 1 and "--resume" in again["stderr"] and "lock" not in again["stderr"]
    assert again["stderr"].startswith("Error: ") and len(again["stderr"].splitlines()) == 2
    assert driver.run([*command(dst), "--resume"])["code"] == 0


# ------------------------------------------------------------------------------------------ concurrency


@pytest.mark.parametrize("second", [[], ["--resume"], ["--overwrite"]], ids=["plain", "resume", "overwrite"])
def test_a_second_run_into_a_busy_destination_is_refused_by_the_lock(driver, scout_dir, tmp_path, second):
    command = _command("quantize", scout_dir)
    ref, dst = tmp_path / "ref", tmp_path / "out"
    assert driver.run(command(ref))["code"] == 0
    partial = tmp_path / ".out.partial"
    first, other = driver.parallel([(command(dst), {"kind": "slow", "seconds": 0.05}),
                                    ([*command(dst), *second], None)],
                                   start_second_when=partial / "progress.json")
    assert first["code"] == 0, first["stderr"]
    assert other["code"] == 1, other
    lines = other["stderr"].splitlines()
    assert lines[0].startswith("Error: ") and len(lines) == 2 and "Traceback" not in other["stderr"]
    assert "lock held" in lines[0] and str(partial) in lines[0], lines
    assert_same_output(dst, ref)
    assert not partial.exists() and not (dst / ".lock").exists()


def test_two_runs_started_together_one_wins_and_the_output_is_right(driver, scout_dir, tmp_path, long_run):
    command = _command("quantize", scout_dir)
    ref = tmp_path / "ref"
    assert driver.run(command(ref))["code"] == 0
    outcomes: dict[str, int] = {}
    for i in range(25 if long_run else 4):
        dst = tmp_path / f"out{i}"
        results = driver.parallel([(command(dst), None), (command(dst), None)])
        codes = sorted(r["code"] for r in results)
        assert codes in ([0, 0], [0, 1]), results
        for r in results:
            if r["code"] == 1:
                line = r["stderr"].splitlines()[0]
                assert any(w in line for w in ("lock held", "already exists", "partial output")), line
                outcomes[line.split(": ")[-1]] = outcomes.get(line.split(": ")[-1], 0) + 1
            else:
                outcomes["ok"] = outcomes.get("ok", 0) + 1
        assert_same_output(dst, ref)
        assert not (tmp_path / f".out{i}.partial").exists()
        shutil.rmtree(dst)
    print(outcomes)
