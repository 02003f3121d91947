"""Hardening campaigns at length: hostile headers and checkpoints, hostile files through the CLI, writes that
fail part-way, processes SIGKILLed at hundreds of points, and two writers racing for one destination.

usage: python bench/bench_hardening.py [--workdir bench/out/hardening] [--seed N] [--quick]

The same properties as the test suite (tests/fuzzkit.py, tests/crashdriver.py, tests/e2e/test_write_faults.py),
with the long counts (`pytest --long` runs the long counts too). Any broken property stops the run with the seed
and case that broke it. Prints a markdown block to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402


def timed(label: str, rows: list[tuple[str, str, float]], fn, describe):
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    rows.append((label, describe(result), seconds))
    print(f"  {label}: {describe(result)} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return result


def cli_campaign(work: Path, seed: int, cases: int) -> dict[str, int]:
    from typer.testing import CliRunner

    from llama4ctl.cli.app import app
    from tests import fuzzkit
    from tests.cli.test_hostile_inspect import check_cli

    rng, runner = random.Random(seed), CliRunner()
    outcomes = {"cases": 0, "ok": 0, "error": 0}
    for i in range(cases):
        path = work / "cli-case.safetensors"
        path.write_bytes(fuzzkit.hostile_file(rng))
        json_mode = i % 3 == 0
        r = runner.invoke(app, ["inspect", str(path), *(["--json"] if json_mode else []),
                                *(["--tensors"] if i % 5 == 0 else [])])
        try:
            outcomes[check_cli(r.exit_code, r.stdout, r.stderr, json_mode)] += 1
        except AssertionError as e:
            raise AssertionError(f"CLI case {i} of seed {seed}: {e}") from None
        outcomes["cases"] += 1
    return outcomes


def fault_campaign(work: Path, src: Path, seed: int, budgets: int) -> dict[str, int]:
    """ENOSPC / EIO after a random number of written bytes, then --resume: bit-identical to the reference."""
    import errno

    import pytest
    from typer.testing import CliRunner

    from llama4ctl.cli.app import app
    from tests.crashdriver import assert_same_output, check_after_kill
    from tests.e2e.test_write_faults import QUANT, SHARD, Faults

    rng, runner = random.Random(seed), CliRunner()
    stats = {"faults": 0, "refused_cleanly": 0, "resumed_identical": 0}
    for kind, extra in (("shard", SHARD), ("quantize", QUANT)):
        ref = work / f"fault-ref-{kind}"
        assert runner.invoke(app, [kind, str(src), str(ref), *extra, "-q"]).exit_code == 0
        total = sum(p.stat().st_size for p in ref.iterdir())
        for i in range(budgets):
            dst = work / f"fault-{kind}"
            mp = pytest.MonkeyPatch()
            Faults(mp, budget=rng.randrange(total), err=rng.choice((errno.ENOSPC, errno.EIO)))
            try:
                r = runner.invoke(app, [kind, str(src), str(dst), *extra])
            finally:
                mp.undo()
            stats["faults"] += 1
            lines = r.stderr.splitlines()
            assert r.exit_code == 1 and len(lines) == 2 and "write failed" in lines[0], (kind, i, r.stderr)
            assert not dst.exists() and check_after_kill(dst, ref) == "partial"
            stats["refused_cleanly"] += 1
            assert runner.invoke(app, [kind, str(src), str(dst), *extra, "--resume", "-q"]).exit_code == 0
            assert_same_output(dst, ref)
            stats["resumed_identical"] += 1
            shutil.rmtree(dst)
    return stats


def kill_campaigns(work: Path, src: Path, seed: int, event_kills: int, timed_kills: int, races: int):
    from tests.crashdriver import Driver, assert_same_output, kill_campaign
    from tests.e2e.test_crash_hardening import QUANT, SHARD

    results = {}
    with Driver(work / "jobs") as d:
        commands = {"shard": lambda dst: ["shard", src, dst, *SHARD],
                    "quantize": lambda dst: ["quantize", src, dst, *QUANT]}
        for kind, command in commands.items():
            assert d.warm(command(work / f"warm-{kind}"))["code"] == 0
        for kind, command in commands.items():
            ref = work / f"kill-ref-{kind}"
            r = d.run(command(ref), {"kind": "count"})
            assert r["code"] == 0, r
            t0 = time.perf_counter()
            stats = kill_campaign(d, command, work / f"kill-{kind}", ref, names=r["names"], seconds=r["seconds"],
                                  seed=seed, event_kills=event_kills, timed_kills=timed_kills)
            stats["events_per_run"] = r["events"]
            stats["seconds"] = time.perf_counter() - t0
            results[kind] = stats
            print(f"  kill {kind}: {stats}", file=sys.stderr, flush=True)
        # two writers started together, `races` times
        ref = work / "kill-ref-quantize"
        outcomes: dict[str, int] = {}
        t0 = time.perf_counter()
        for i in range(races):
            dst = work / f"race{i}"
            rs = d.parallel([(commands["quantize"](dst), None), (commands["quantize"](dst), None)])
            assert sorted(r["code"] for r in rs) in ([0, 0], [0, 1]), rs
            for r in rs:
                key = "ok" if r["code"] == 0 else r["stderr"].splitlines()[0].split(": ")[-1]
                outcomes[key] = outcomes.get(key, 0) + 1
            assert_same_output(dst, ref)
            assert not (work / f".race{i}.partial").exists()
            shutil.rmtree(dst)
        results["races"] = {"rounds": races, "outcomes": outcomes, "seconds": time.perf_counter() - t0}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "hardening")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="the CI-sized counts")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    q = args.quick
    n = {"headers": 4000 if q else 100_000, "checkpoints": 1500 if q else 20_000, "cli": 150 if q else 3000,
         "faults": 5 if q else 40, "event_kills": 10 if q else 150, "timed_kills": 2 if q else 40,
         "races": 4 if q else 25}

    from llama4ctl.fixtures import build_tiny_checkpoint
    from tests import fuzzkit

    src = build_tiny_checkpoint(work / "tiny-llama4-scout", shape="scout")
    rows: list[tuple[str, str, float]] = []
    print(f"seed {seed}", file=sys.stderr)
    (work / "headers").mkdir()
    h = timed("hostile .safetensors files (parse + safetensors differential + guarded reads)", rows,
              lambda: fuzzkit.header_campaign(work / "headers", seed, n["headers"]),
              lambda s: f"{s['cases']:,} cases: {s['refused']:,} refused, {s['accepted']:,} accepted")
    (work / "checkpoints").mkdir()
    c = timed("hostile checkpoint directories (index, shard headers, config)", rows,
              lambda: fuzzkit.checkpoint_campaign(work / "checkpoints", seed, n["checkpoints"]),
              lambda s: f"{s['cases']:,} cases: {s['refused']:,} refused, {s['accepted']:,} accepted")
    cl = timed("`inspect` on hostile files (CLI contract: one line, exit 1, no traceback)", rows,
               lambda: cli_campaign(work, seed, n["cli"]),
               lambda s: f"{s['cases']:,} runs: {s['error']:,} one-line errors, {s['ok']:,} summaries")
    f = timed("ENOSPC/EIO after a random byte count, then --resume (shard + quantize)", rows,
              lambda: fault_campaign(work, src, seed, n["faults"]),
              lambda s: f"{s['faults']} faults: {s['refused_cleanly']} clean errors, "
                        f"{s['resumed_identical']} bit-identical resumes")
    k = timed("SIGKILL + --resume, and racing writers", rows,
              lambda: kill_campaigns(work, src, seed, n["event_kills"], n["timed_kills"], n["races"]),
              lambda r: f"{r['shard']['kill_points'] + r['quantize']['kill_points']} kill points, "
                        f"{r['races']['rounds']} races")
    del h, c, cl, f

    print(f"\n### Hardening campaigns ({datetime.date.today()}, {machine()}, seed {seed}"
          f"{', --quick' if q else ''})\n")
    print("| campaign | result | seconds |\n|---|---|---:|")
    for label, result, seconds in rows:
        print(f"| {label} | {result} | {seconds:.1f} |")
    print()
    for kind in ("shard", "quantize"):
        s = k[kind]
        print(f"- kill points, `{kind}` ({s['events_per_run']} writer events per run): {s['kill_points']} "
              f"({s['killed']} killed, {s['finished_first']} finished before the timed kill); left behind: "
              f"{s['left']}; every --resume bit-identical to the uninterrupted run; {s['seconds']:.1f} s")
        kinds = sorted(s["event_names"].items(), key=lambda kv: -kv[1])
        print(f"  - events killed at: {', '.join(f'{name} ×{count}' for name, count in kinds)}")
    print(f"- races (two `quantize` into one DST, started together): {k['races']['rounds']} rounds, outcomes "
          f"{k['races']['outcomes']}; final output always bit-identical; {k['races']['seconds']:.1f} s")


if __name__ == "__main__":
    main()
