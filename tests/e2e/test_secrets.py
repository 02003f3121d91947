"""The Hub token never appears in stdout, stderr (with --debug too), --json documents, downloaded or written
files, model cards, quantization reports, or anything pushed — on success and on failure, whether it comes
from HF_TOKEN or --token, and whatever its format (the tokens below do not look like `hf_...`).

Runs against the fake Hub in tests/hubserver.py over loopback HTTP; never the internet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.hubserver import FakeHub

ROOT = Path(__file__).resolve().parents[2]
REPO = "meta-llama/Llama-4-Secret-16E"
READ = "tok-Llama4ctlReadSecret-7f3a9c1e5b2d"      # allowed on the gated repo
WRITE = "tok-Llama4ctlWriteSecret-0b9e8d7c6a5f"    # may write
WRONG = "tok-Llama4ctlWrongSecret-5e4d3c2b1a09"    # valid nowhere
OAUTH = "hf_oauth_Llama4ctlSecret_1234567890abcdef"  # an OAuth-shaped token: not matched by `hf_[A-Za-z0-9]{8,}`
SECRETS = (READ, WRITE, WRONG, OAUTH)


def _leaks(texts: list[str], roots: list[Path], extra: dict[str, bytes] | None = None) -> list[str]:
    """Where any secret (or its distinctive middle part) shows up."""
    needles = [s for t in SECRETS for s in (t, t[4:24])]
    found = [f"output {i}: {n}" for i, text in enumerate(texts) for n in needles if n in text]
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                found += [f"{p}: {n}" for n in needles if n.encode() in data]
    for name, data in (extra or {}).items():
        found += [f"pushed {name}: {n}" for n in needles if n.encode() in data]
    return found


@pytest.fixture(scope="module")
def repo_files(scout_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(scout_dir.iterdir()) if p.is_file()}


@pytest.fixture
def hub():
    with FakeHub(write_tokens=(WRITE, OAUTH), lifetime=180) as h:
        yield h


@pytest.fixture
def cli(hub: FakeHub, tmp_path: Path):
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200",
            "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5"}

    def run_all(*calls: tuple[tuple[object, ...], dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
        """Run `python -m llama4ctl ARGS` for each (ARGS, extra env), two at a time."""
        def one(call):
            args, env = call
            return subprocess.run([sys.executable, "-m", "llama4ctl", *map(str, args)], capture_output=True,
                                  text=True, env={**base, **env}, timeout=120, cwd=tmp_path)

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(one, calls))

    return run_all


def test_download_and_inspect_never_show_the_token(hub, cli, repo_files, tmp_path):
    hub.add_repo(REPO, repo_files, gated=True, allowed_tokens=(READ, OAUTH))
    ok_dl, ok_inspect, ok_oauth, denied, denied_inspect, wrong_flag = cli(
        (("download", REPO, "--local-dir", tmp_path / "dl", "--json", "--debug"), {"HF_TOKEN": READ}),
        (("inspect", REPO, "--json", "--debug"), {"HF_TOKEN": READ}),
        (("download", REPO, "--local-dir", tmp_path / "dl-oauth", "--include", "*.json", "--debug"),
         {"HF_TOKEN": OAUTH}),
        (("download", REPO, "--local-dir", tmp_path / "denied", "--debug"), {"HF_TOKEN": WRONG}),
        (("inspect", REPO, "--debug", "--json"), {"HF_TOKEN": WRONG}),
        (("download", REPO, "--local-dir", tmp_path / "denied2", "--token", WRONG, "--json"), {}),
    )
    assert ok_dl.returncode == 0 and json.loads(ok_dl.stdout)["verified"] is True, ok_dl.stderr
    assert ok_inspect.returncode == 0 and json.loads(ok_inspect.stdout)["shards"] == 8, ok_inspect.stderr
    assert ok_oauth.returncode == 0, ok_oauth.stderr
    for r in (denied, denied_inspect, wrong_flag):
        assert r.returncode == 1 and ("license" in r.stderr or "Traceback" in r.stderr), r.stderr
    assert "error" in json.loads(wrong_flag.stdout)
    hub.add_fault("GET", "/resolve/.*/model-00003-of-00008.safetensors$", "corrupt")
    corrupt, = cli((("download", REPO, "--local-dir", tmp_path / "dl2", "--json", "--debug"), {"HF_TOKEN": READ}))
    assert corrupt.returncode != 0
    runs = [ok_dl, ok_inspect, ok_oauth, denied, denied_inspect, wrong_flag, corrupt]
    leaks = _leaks([r.stdout + r.stderr for r in runs], [tmp_path])
    assert not leaks, leaks


def test_quantize_report_and_provenance_never_hold_the_token(scout_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llama4ctl.cli.app import app

    monkeypatch.setenv("HF_TOKEN", READ)
    dst = tmp_path / "fp8"
    r = CliRunner().invoke(app, ["quantize", str(scout_dir), str(dst), "--fp8", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.stderr
    assert (dst / "quantization_report.json").is_file() and (dst / "llama4ctl.json").is_file()
    leaks = _leaks([r.stdout, r.stderr], [dst])
    assert not leaks, leaks


def test_push_and_its_model_card_never_show_the_token(hub, cli, scout_dir, tmp_path):
    from llama4ctl import jobs

    src = tmp_path / "Llama-4-Secret-16E"
    src.mkdir()
    for p in scout_dir.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "llama4ctl-download.json").write_text(json.dumps({"repo_id": REPO}))
    dst = tmp_path / "Llama-4-Secret-16E-FP8"
    jobs.quantize(jobs.plan_quantize(src, method="fp8"), dst, device="cpu",
                  command=["llama4ctl", "quantize", str(src), str(dst), "--fp8"])
    ok_flag, ok_env, dry, no_write, no_write_flag = cli(
        (("push", dst, "me/secret-fp8", "--token", WRITE, "--json", "--debug"), {}),
        (("push", dst, "me/secret-fp8-b", "--private", "--debug"), {"HF_TOKEN": OAUTH}),
        (("push", dst, "me/secret-fp8-c", "--dry-run", "--json", "--debug"), {"HF_TOKEN": WRITE}),
        (("push", dst, "me/not-allowed", "--json", "--debug"), {"HF_TOKEN": READ}),
        (("push", dst, "me/not-allowed-2", "--token", WRONG), {"HF_TOKEN": WRITE}),
    )
    assert ok_flag.returncode == 0 and json.loads(ok_flag.stdout)["model_card"] == "generated", ok_flag.stderr
    assert ok_env.returncode == 0, ok_env.stderr
    assert dry.returncode == 0 and "base_model" in json.loads(dry.stdout)["card"]
    assert no_write.returncode == 1 and no_write_flag.returncode == 1
    assert "Traceback" not in no_write_flag.stderr and no_write_flag.stderr.startswith("Error: ")
    pushed = {f"{c['revision']}/{name}": data for c in hub.commits for name, data in c["files"].items()}
    assert any(name.endswith("README.md") for name in pushed) and len(hub.commits) == 2
    runs = [ok_flag, ok_env, dry, no_write, no_write_flag]
    leaks = _leaks([r.stdout + r.stderr for r in runs], [tmp_path], pushed)
    assert not leaks, leaks


def test_hub_errors_scrub_the_token_huggingface_hub_would_send(monkeypatch):
    """Error text from the HTTP layer is cleaned of the HF_TOKEN / saved-login token even when llama4ctl was
    not handed it explicitly, and of OAuth-shaped tokens (hf_oauth_...)."""
    import httpx

    from llama4ctl.hub import _hub_error

    monkeypatch.setenv("HF_TOKEN", READ)
    for exc in (RuntimeError(f"Authorization: Bearer {READ}"), httpx.ConnectError(f"no route ({READ})"),
                RuntimeError(f"token {OAUTH} rejected")):
        message = str(_hub_error(exc, "me/x"))
        assert READ not in message and OAUTH not in message and "***" in message, message
    message = str(_hub_error(RuntimeError(f"bad {WRONG}"), "me/x", token=WRONG))
    assert WRONG not in message
