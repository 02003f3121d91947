"""Coverage-guided fuzzing of the safetensors header parser with atheris (libFuzzer).

Optional, not part of the test suite (pytest collects test_*.py only):

    pip install atheris
    python tests/fuzz/fuzz_header.py -atheris_runs=200000            # whole files from libFuzzer's bytes
    python tests/fuzz/fuzz_header.py -max_total_time=600 corpus/     # keep a corpus; add -jobs=N to fork

The input is used as a whole .safetensors file (the seed corpus is a few valid files from tests/fuzzkit.py);
the properties are the suite's (tests/fuzzkit.check_header_file): only CheckpointError escapes, one line,
reads bounded by the file, and whatever is accepted reads the same in safetensors (Rust). Any other exception
is a crash that libFuzzer saves as crash-<sha1>.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["llama4ctl"]):
    from llama4ctl.checkpoint import checkpoint, header  # noqa: F401

from tests import fuzzkit  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="llama4ctl-atheris-"))
FILE = WORK / "input.safetensors"


def test_one_input(data: bytes) -> None:
    fuzzkit.check_header_file(FILE, data)


def seed_corpus(directory: Path) -> None:
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        (directory / f"seed-{i}.safetensors").write_bytes(fuzzkit.build_file(rng)[0])


if __name__ == "__main__":
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus directory given: use a fresh seed corpus
        corpus = WORK / "corpus"
        seed_corpus(corpus)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
