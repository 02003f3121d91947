"""`llama4ctl download` against a real Hub-compatible mirror server: olah (PyPI `olah` 0.5.4), offline, on 127.0.0.1.

olah serves a local git repository (branch `main`, plain git, no LFS) laid out as
`<mirror>/models/<org>/<repo>` with `[accessibility] offline = true`, so it never contacts huggingface.co.
The CLI runs in a subprocess because HF_ENDPOINT must be set before huggingface_hub is imported.

olah's dependency fastapi-utils pins psutil<6 (this environment may have psutil 7), so olah may live in its own
virtual environment: set OLAH_CLI=/path/to/venv/bin/olah-cli, or put `olah-cli` on PATH. Without it, the whole
file is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llama4ctl.fixtures import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
REPO = "tinyorg/tiny-llama4"
HOST = "127.0.0.1"

OLAH_CLI = os.environ.get("OLAH_CLI") or shutil.which("olah-cli") or shutil.which(
    "olah-cli", path=str(Path(sys.executable).parent))
if not OLAH_CLI or not os.access(OLAH_CLI, os.X_OK):
    pytest.skip("olah is not installed (pip install olah==0.5.4, or set OLAH_CLI)", allow_module_level=True)
if shutil.which("git") is None:
    pytest.skip("git is needed to build the mirrored repository", allow_module_level=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def olah(tmp_path_factory: pytest.TempPathFactory):
    """(url, commit sha, {path: bytes}) of an olah server mirroring the tiny checkpoint as a git repo."""
    base = tmp_path_factory.mktemp("olah")
    repo_dir = base / "mirror" / "models" / REPO
    build_tiny_checkpoint(repo_dir)
    files = {p.name: p.read_bytes() for p in sorted(repo_dir.iterdir()) if p.is_file()}
    _git(repo_dir, "init", "-q", "-b", "main")
    _git(repo_dir, "add", "-A")
    _git(repo_dir, "commit", "-q", "-m", "tiny llama4")
    sha = _git(repo_dir, "rev-parse", "HEAD")

    port = _free_port()
    (base / "olah.toml").write_text(
        f'[basic]\nhost = "{HOST}"\nport = {port}\nrepos-path = "{base / "repos"}"\n'
        f'mirrors-path = ["{base / "mirror"}"]\n\n[accessibility]\noffline = true\n')
    log = (base / "olah.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.Popen([OLAH_CLI, "-c", "olah.toml"], cwd=base, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"olah-cli exited with {proc.returncode}:\n{(base / 'olah.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/models/{REPO}/revision/main", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read())["sha"] == sha:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"olah did not answer within 30 s:\n{(base / 'olah.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, sha, files
    finally:
        # olah starts `git cat-file` helpers; its own session holds them all, so end that process group only
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def run(olah, tmp_path: Path):
    url = olah[0]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200",
           "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5",
           "HF_HUB_DOWNLOAD_TIMEOUT": "5"}

    def _run(*args: object) -> dict:
        r = subprocess.run([sys.executable, "-m", "llama4ctl", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("\n") == 1, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["kind"] == "download"
        return doc

    return _run


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(root).parts}


def _vision_only(files: dict[str, bytes]) -> list[str]:
    shards: dict[str, set[str]] = {}
    for name, shard in json.loads(files["model.safetensors.index.json"])["weight_map"].items():
        shards.setdefault(shard, set()).add(name.split(".")[0])
    return sorted(s for s, prefixes in shards.items() if prefixes == {"vision_model"})


def test_download_local_dir_is_byte_identical(olah, run, tmp_path):
    _, sha, files = olah
    doc = run("download", REPO, "--local-dir", tmp_path / "out", "--json")
    assert doc["commit"] == sha and doc["verified"] is True
    assert all(f["ok"] for f in doc["files"])
    assert doc["total_bytes"] == sum(map(len, files.values()))
    assert _tree(tmp_path / "out") == files


def test_components_text_skips_vision_only_shards(olah, run, tmp_path):
    _, sha, files = olah
    vision_only = _vision_only(files)
    if not vision_only:
        pytest.skip("the tiny checkpoint has no vision-only shard")
    doc = run("download", REPO, "--local-dir", tmp_path / "text", "--components", "text", "--json")
    assert doc["commit"] == sha and doc["verified"] is True
    assert doc["skipped_by_components"] == vision_only
    assert _tree(tmp_path / "text") == {k: v for k, v in files.items() if k not in vision_only}


def test_dry_run_lists_sizes_and_downloads_nothing(olah, run, tmp_path):
    _, sha, files = olah
    doc = run("download", REPO, "--local-dir", tmp_path / "dry", "--dry-run", "--json")
    assert doc["dry_run"] is True and doc["commit"] == sha and doc["verified"] is None
    assert {f["path"]: f["size"] for f in doc["files"]} == {k: len(v) for k, v in files.items()}
    assert doc["bytes_to_download"] == doc["total_bytes"] == sum(map(len, files.values()))
    assert not (tmp_path / "dry").exists() or not _tree(tmp_path / "dry")
