"""Runs llama4ctl commands in forked children that are SIGKILLed at chosen or random points.

    python -m tests.crashdriver            (PYTHONPATH = the repository root)

Importing torch and llama4ctl costs seconds per process; this driver pays it once, then forks one child per job
(the parent never runs a torch op, so no thread pool is forked). Jobs arrive as JSON lines on stdin and each
gets one JSON line back on stdout:

  {"args": [...CLI args...], "out": "/dir/for/child/stdout+stderr", "hook": HOOK, "timeout": 60}
  {"parallel": [job, job, ...], "start_second_when": "/path/that/must/exist"}     -> {"results": [...]}

HOOK (None: a plain run):
  {"kind": "count"}                       run to the end; report how many kill points (events) it passed
  {"kind": "event", "at": N}              SIGKILL itself at event N (before the write, rename, fsync ... it names)
  {"kind": "event", "at": N, "torn": 1}   at a shard write: write half of the chunk, flush, then SIGKILL
  {"kind": "delay", "seconds": S}         the driver SIGKILLs the child S seconds after forking it
  {"kind": "slow", "seconds": S}          sleep S after every finished shard (to overlap two runs)

Events are every shard open, chunk write and close, progress save, rename (os.replace), fsync, metadata file
and commit step of llama4ctl.exec.writer: between them lie all the states a killed run can leave on disk.
Result: {"status": "exit" | "killed" | "timeout", "code", "seconds", "events", "event_name"}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

EVENTS: dict[str, Any] = {"n": 0, "at": None, "torn": False, "name": None, "names": None}


def _event(name: str) -> bool:
    """Count one kill point; True when this is the one to die at (torn writes die in the caller)."""
    EVENTS["n"] += 1
    if EVENTS["names"] is not None:
        EVENTS["names"].append(name)
    if EVENTS["at"] is not None and EVENTS["n"] == EVENTS["at"]:
        EVENTS["name"] = name
        _note_event()
        if not (EVENTS["torn"] and name == "write"):
            os.kill(os.getpid(), signal.SIGKILL)
        return True
    return False


def _note_event() -> None:
    path = os.environ.get("CRASHDRIVER_EVENTS")
    if path:
        with open(path, "w") as f:
            f.write(json.dumps({"events": EVENTS["n"], "event_name": EVENTS["name"], "names": EVENTS["names"]}))


def _install_event_hooks(hook: dict[str, Any]) -> None:
    from llama4ctl.exec import writer

    EVENTS["at"] = hook.get("at") if hook["kind"] == "event" else None
    EVENTS["torn"] = bool(hook.get("torn"))
    EVENTS["names"] = [] if hook["kind"] == "count" else None
    shard_file, out_dir = writer.ShardFile, writer.OutputDir

    def before(cls: type, name: str) -> None:
        real = getattr(cls, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            _event(f"{cls.__name__}.{name}")
            result = real(*args, **kwargs)
            _event(f"after {cls.__name__}.{name}")
            return result

        setattr(cls, name, wrapped)

    for name in ("__init__", "close"):
        before(shard_file, name)
    for name in ("_save_progress", "mark_finished", "write_json", "write_text", "copy_file", "commit"):
        before(out_dir, name)

    real_write = shard_file.write

    def write(self: Any, name: str, chunk: Any) -> int:
        if _event("write"):  # torn: half of this chunk reaches the file, then the process dies
            if isinstance(chunk, writer.FileRange):
                self._f.flush()
                half = writer.FileRange(chunk.path, chunk.offset, chunk.length // 2)
                if half.length:
                    writer._copy_range(half, self._f.fileno())
            else:
                data = writer._as_bytes(chunk)
                self._f.write(data[: len(data) // 2])
                self._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, name, chunk)

    shard_file.write = write

    for name in ("replace", "fsync"):
        real = getattr(os, name)

        def wrapped_os(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            _event(f"os.{_name}")
            result = _real(*args, **kwargs)
            _event(f"after os.{_name}")
            return result

        setattr(os, name, wrapped_os)


def _install_slow_hook(seconds: float) -> None:
    from llama4ctl.exec import writer

    real_close = writer.ShardFile.close

    def close(self: Any) -> None:
        real_close(self)
        time.sleep(seconds)

    writer.ShardFile.close = close


def _child(job: dict[str, Any]) -> None:
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["out"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ["CRASHDRIVER_EVENTS"] = job["out"] + ".events"
    sys.argv = ["llama4ctl", *job["args"]]  # what the command records as its command line
    code = 1
    try:
        hook = job.get("hook") or {}
        if hook.get("kind") in ("event", "count"):
            _install_event_hooks(hook)
        elif hook.get("kind") == "slow":
            _install_slow_hook(hook["seconds"])
        from llama4ctl.cli.app import app

        try:
            app(job["args"], prog_name="llama4ctl")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _note_event()
    except BaseException:  # noqa: BLE001 - reported through the exit code and stderr
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start(job: dict[str, Any]) -> tuple[int, float]:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(job)
    return pid, time.monotonic()


def _wait(pid: int, t0: float, job: dict[str, Any]) -> dict[str, Any]:
    hook = job.get("hook") or {}
    kill_at = t0 + hook["seconds"] if hook.get("kind") == "delay" else None
    deadline = t0 + job.get("timeout", 120)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = None
        if now >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"status": "timeout", "code": None, "seconds": now - t0}
        time.sleep(0.0005)
    result: dict[str, Any] = {"seconds": time.monotonic() - t0}
    if os.WIFSIGNALED(status):
        result.update(status="killed", code=-os.WTERMSIG(status))
    else:
        result.update(status="exit", code=os.WEXITSTATUS(status))
    try:
        with open(job["out"] + ".events") as f:
            result.update(json.load(f))
    except (OSError, ValueError):
        pass
    return result


def _warm(args: list[str]) -> dict[str, Any]:
    """Run a command once in the parent (one torch thread, so no pool exists to be forked), so that its
    first-call costs (kernel loading, regex caches) are paid once rather than in every child."""
    import threading

    import torch

    from llama4ctl.cli.app import app

    torch.set_num_threads(1)
    t0 = time.monotonic()
    try:
        app(args, prog_name="llama4ctl")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    assert threading.active_count() == 1, threading.enumerate()  # nothing left running to lose at fork
    return {"status": "exit", "code": code, "seconds": time.monotonic() - t0}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    if "warm" in job:
        return _warm(job["warm"])
    if "parallel" in job:
        jobs = job["parallel"]
        started = [_start(jobs[0])]
        gate = job.get("start_second_when")
        if gate:
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.002)
        started += [_start(j) for j in jobs[1:]]
        return {"results": [_wait(pid, t0, j) for (pid, t0), j in zip(started, jobs)]}
    return _wait(*_start(job), job)


def main() -> None:
    # Pay the imports once, in the parent, without running any torch op (no thread pool to fork).
    import torch  # noqa: F401

    import llama4ctl.cli.app  # noqa: F401
    import llama4ctl.exec.executor  # noqa: F401
    import llama4ctl.exec.kernels  # noqa: F401
    import llama4ctl.formats.compressed_tensors  # noqa: F401
    import llama4ctl.formats.fbgemm_fp8  # noqa: F401
    import llama4ctl.jobs  # noqa: F401
    import llama4ctl.quality  # noqa: F401

    try:
        import compressed_tensors.quantization  # noqa: F401  (what the format's warm_up imports)
    except ImportError:
        pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_job(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------------------------------- client


class Driver:
    """The test side: `with Driver(workdir) as d: d.run(args, hook)`; one driver process, many children."""

    def __init__(self, workdir: Any):
        from pathlib import Path

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self.proc: Any = None

    def __enter__(self) -> Driver:
        import subprocess
        from pathlib import Path

        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": root, "NO_COLOR": "1", "COLUMNS": "200"}
        env.pop("LLAMA4CTL_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.crashdriver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=root, env=env)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("crash driver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def _job(self, args: list[Any], hook: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        self._n += 1
        return {"args": [str(a) for a in args], "hook": hook, "timeout": timeout,
                "out": str(self.workdir / f"job{self._n}")}

    def _send(self, job: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("crash driver died")
        return json.loads(line)

    @staticmethod
    def _outputs(job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        for key, suffix in (("stdout", ""), ("stderr", ".err")):
            try:
                with open(job["out"] + suffix, errors="replace") as f:
                    result[key] = f.read()
            except OSError:
                result[key] = ""
        return result

    def warm(self, args: list[Any]) -> dict[str, Any]:
        """Run once inside the driver itself (quietly: pass -q) so that later children start warm."""
        return self._send({"warm": [str(a) for a in args]})

    def run(self, args: list[Any], hook: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        job = self._job(args, hook, timeout)
        return self._outputs(job, self._send(job))

    def parallel(self, runs: list[tuple[list[Any], dict[str, Any] | None]], start_second_when: Any = None,
                 timeout: float = 120) -> list[dict[str, Any]]:
        jobs = [self._job(args, hook, timeout) for args, hook in runs]
        msg: dict[str, Any] = {"parallel": jobs}
        if start_second_when is not None:
            msg["start_second_when"] = str(start_second_when)
        return [self._outputs(j, r) for j, r in zip(jobs, self._send(msg)["results"])]


# ------------------------------------------------------------------------------------- output comparisons


def output_files(d: Any) -> dict[str, bytes]:
    """Every file of an output; llama4ctl.json without its timestamp and command line (they differ per run)."""
    from pathlib import Path

    files = {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}
    if "llama4ctl.json" in files:
        prov = json.loads(files["llama4ctl.json"])
        prov.pop("created", None)
        prov.pop("command", None)
        files["llama4ctl.json"] = json.dumps(prov, sort_keys=True).encode()
    return files


def assert_same_output(got: Any, ref: Any, ignore: tuple[str, ...] = ()) -> None:
    a, b = output_files(got), output_files(ref)
    for name in ignore:
        a.pop(name, None)
        b.pop(name, None)
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)), got)
    for name in a:
        assert a[name] == b[name], f"{got}/{name} differs from the uninterrupted run"


def check_after_kill(dst: Any, ref: Any, ignore: tuple[str, ...] = ()) -> str:
    """What a killed run may leave: no DST, or (killed after its final rename) a complete and correct one; in
    the partial directory, every shard the progress file calls finished is byte-identical to the reference."""
    from pathlib import Path

    dst, ref = Path(dst), Path(ref)
    partial = dst.parent / f".{dst.name}.partial"
    if dst.exists():
        lock = dst / ".lock"
        if lock.exists():  # killed between the rename and removing the lock file: --resume removes it
            assert lock.stat().st_size == 0
        assert_same_output(dst, ref, ignore=(".lock", *ignore))
        return "complete"
    progress = partial / "progress.json"
    if progress.exists():
        finished = json.loads(progress.read_text())["finished"]
        for shard in finished:
            assert (partial / shard).read_bytes() == (ref / shard).read_bytes(), f"{shard} recorded but wrong"
    return "partial" if partial.exists() else "nothing"


def kill_points(names: list[str], count: int, rng: Any) -> list[int]:
    """`count` event numbers (1-based): first one of each kind of event (a random occurrence), then one random
    point in each of the equal slices of the run the rest are spread over."""
    by_kind: dict[str, list[int]] = {}
    for i, name in enumerate(names, 1):
        by_kind.setdefault(name, []).append(i)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    points = [rng.choice(by_kind[k]) for k in kinds[:count]]
    rest, n = count - len(points), len(names)
    for i in range(rest):
        lo = 1 + i * n // rest
        points.append(rng.randint(lo, max(lo, (i + 1) * n // rest)))
    return points


def kill_campaign(driver: Driver, command: Any, workdir: Any, ref: Any, *, names: list[str], seconds: float,
                  seed: int, event_kills: int, timed_kills: int) -> dict[str, Any]:
    """SIGKILL `command(dst)` at `event_kills` of the kill points `names` of a counted run (every kind of event
    first; half of the writes torn) and at `timed_kills` random instants within ~1.3x its run time; after each,
    --resume must finish with the uninterrupted output `ref`, bit for bit."""
    import random
    import shutil
    from pathlib import Path

    rng = random.Random(seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hooks: list[dict[str, Any]] = [{"kind": "event", "at": at, "torn": int(rng.random() < 0.5)}
                                   for at in kill_points(names, event_kills, rng)]
    hooks += [{"kind": "delay", "seconds": rng.uniform(0, 1.3 * seconds)} for _ in range(timed_kills)]
    stats: dict[str, Any] = {"kill_points": 0, "killed": 0, "finished_first": 0, "left": {}, "event_names": {}}
    for i, hook in enumerate(hooks):
        dst = workdir / f"out{i}"
        r = driver.run(command(dst), hook)
        assert r["status"] == "killed" or (r["status"] == "exit" and r["code"] == 0), (hook, r)
        stats["kill_points"] += 1
        stats["killed" if r["status"] == "killed" else "finished_first"] += 1
        if r.get("event_name"):
            stats["event_names"][r["event_name"]] = stats["event_names"].get(r["event_name"], 0) + 1
        left = check_after_kill(dst, ref)
        stats["left"][left] = stats["left"].get(left, 0) + 1
        again = driver.run([*command(dst), "--resume"])
        assert again["status"] == "exit" and again["code"] == 0, (hook, again["stderr"][-2000:])
        assert_same_output(dst, ref)
        assert not (workdir / f".{dst.name}.partial").exists()
        shutil.rmtree(dst)
    return stats
