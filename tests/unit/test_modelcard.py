"""A model card is public: it names the base by repo id and never prints the machine's absolute paths."""

import json

from llama4ctl.modelcard import build_model_card


def test_card_names_the_base_by_repo_id_and_strips_local_paths(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "llama4ctl.json").write_text(json.dumps({
        "complete": True, "operation": {"format": "fbgemm_fp8", "backend": "fbgemm"},
        "command": ["/home/alice/venv/bin/llama4ctl", "quantize", "/home/alice/work/base/", "/home/alice/work/out",
                    "--fp8", "--ignore", "re:.*router"],
        "source": {"path": "/home/alice/work/base"}}))
    dedup = {"base": "/home/alice/work/base", "reused_bytes": 50, "total_bytes": 100}
    card = build_model_card(d, repo_id="me/mav-fp8", base_model="meta-llama/Llama-4-Maverick-17B-128E-Instruct",
                            dedup=dedup)
    assert "/home/alice" not in card
    assert "Xet chunk reuse against meta-llama/Llama-4-Maverick-17B-128E-Instruct: 50.0%" in card
    assert "llama4ctl quantize base out --fp8 --ignore 're:.*router'" in card
