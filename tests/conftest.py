"""Shared pytest fixtures: tiny Llama-4-shaped checkpoints, built once per session (see llama4ctl/fixtures.py).

The session checkpoints are shared by every test that asks for them: treat them as read-only. A test that
modifies, corrupts or deletes files should copy one first (`shutil.copytree(scout_dir, tmp_path / "ckpt")`) or
build its own with `make_tiny_checkpoint(**kwargs)`. Nothing is built, and torch/transformers are not imported,
unless a test requests one of these fixtures.

| fixture | what it is |
|---|---|
| `scout_dir` | Llama4ForConditionalGeneration, scout-shaped: 4 layers all MoE (4 experts), qk-norm, vision tower |
| `maverick_dir` | Llama4ForConditionalGeneration, maverick-shaped: layers 0, 2 dense and 1, 3 MoE, no qk-norm, vision |
| `text_only_dir` | Llama4ForCausalLM, maverick-shaped (dense and MoE layers), `model.…` / `lm_head.weight` keys |
| `scout_text_only_dir` | Llama4ForCausalLM, scout-shaped |
| `legacy_config_dir` | like `scout_dir` but config.json has the old `"attn_temperature_tuning": 4` |
| `make_tiny_checkpoint` | factory: `make_tiny_checkpoint(shape=..., ...)` builds a fresh one under `tmp_path` |

All have hidden 64, expert intermediate 48 (gate_up_proj [4, 64, 96], down_proj [4, 48, 64]), dense MLP 96,
vocab 512 (special tokens 384–511), BF16, seed 0, 100 KB shards (6–8 shards + index), tokenizer with the
Llama 4 chat template; the multimodal ones also have the processor files.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs) -> Path:
    from llama4ctl.fixtures import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama4") / name, **kwargs)


@pytest.fixture(scope="session")
def scout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "tiny-llama4-scout", shape="scout")


@pytest.fixture(scope="session")
def maverick_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "tiny-llama4-maverick", shape="maverick")


@pytest.fixture(scope="session")
def text_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "tiny-llama4-maverick-text", shape="maverick", text_only=True)


@pytest.fixture(scope="session")
def scout_text_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "tiny-llama4-scout-text", shape="scout", text_only=True)


@pytest.fixture(scope="session")
def legacy_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "tiny-llama4-scout-legacy", shape="scout", legacy_config=True)


@pytest.fixture
def make_tiny_checkpoint(tmp_path: Path):
    """Build a fresh tiny checkpoint under this test's tmp_path: make_tiny_checkpoint(name="ckpt", **kwargs)."""
    from llama4ctl.fixtures import build_tiny_checkpoint

    def make(name: str = "ckpt", **kwargs) -> Path:
        return build_tiny_checkpoint(tmp_path / name, **kwargs)

    return make


# ------------------------------------------------------------------------------------- hardening: --long
# The fuzz and kill tests run a CI-sized campaign by default; `pytest --long` (or LLAMA4CTL_LONG=1) runs the
# long one: ~100k hostile headers and hundreds of kill points (bench/bench_hardening.py runs the same).


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="long hardening campaigns: ~100k fuzz cases, hundreds of kill points")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under `pytest --long` or LLAMA4CTL_LONG=1."""
    import os

    return bool(request.config.getoption("--long")) or os.environ.get("LLAMA4CTL_LONG") == "1"
