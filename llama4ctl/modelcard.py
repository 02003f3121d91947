"""The README.md (model card) that `push` generates for a checkpoint folder that has none.

Everything is read defensively from the folder: llama4ctl.json (provenance: command, version, source, what was
done), quantization_report.json (written by `quantize`), config.json (quantization_config, architecture).
Any of them may be missing or malformed; the card then says less, it never fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint.layout import KEPT_IN_BF16, component
from llama4ctl.units import human_size

LICENSE_LINK = "https://github.com/meta-llama/llama-models/blob/main/models/llama4/LICENSE"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[0-9a-f]{40}/?$")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _is_repo_id(text: Any) -> bool:
    return isinstance(text, str) and bool(_REPO_ID.match(text)) and ".." not in text and not text.startswith(".")


def resolve_base_model(src: Path, provenance: dict[str, Any] | None, config: dict[str, Any] | None,
                       override: str | None = None) -> str | None:
    """--base-model, else the Hub repo the source came from (repo id, HF cache path, or a llama4ctl download)."""
    if override:
        return override
    source = (provenance or {}).get("source")
    path = source.get("path") if isinstance(source, dict) else source
    if isinstance(path, str) and path:
        if _is_repo_id(path) and not Path(path).exists():
            return path
        m = _CACHE_SNAPSHOT.search(path.rstrip("/") + "/")
        if m:
            return f"{m.group('org')}/{m.group('name')}"
        from llama4ctl.hub import DOWNLOAD_MARKER

        marker = _read_json(Path(path) / ".cache" / "huggingface" / DOWNLOAD_MARKER)
        if marker and _is_repo_id(marker.get("repo_id")):
            return str(marker["repo_id"])
    name = (config or {}).get("_name_or_path")
    return name if _is_repo_id(name) and not Path(str(name)).exists() else None


def describe_quantization(provenance: dict[str, Any] | None, report: dict[str, Any] | None,
                          config: dict[str, Any] | None) -> dict[str, Any]:
    """{quantized, method (fp8/int4/int8), scheme, backend, format, backend_tag} from whatever is available."""
    op = (provenance or {}).get("operation")
    op = op if isinstance(op, dict) else {}
    rep = report or {}
    qc = (config or {}).get("quantization_config")
    qc = qc if isinstance(qc, dict) else {}
    fmt = str(rep.get("format") or op.get("format") or qc.get("quant_method") or "") or None
    scheme = rep.get("scheme") or op.get("scheme")
    backend = rep.get("backend") or op.get("backend")
    bits: int | None = None
    if not scheme and qc:
        from llama4ctl.inspection import _ct_bits, _ct_scheme

        if qc.get("quant_method") == "compressed-tensors":
            scheme, bits = _ct_scheme(qc), _ct_bits(qc)
        elif qc.get("quant_method") == "bitsandbytes":
            bits = 4 if qc.get("load_in_4bit") else 8
            scheme = qc.get("bnb_4bit_quant_type", "nf4") if bits == 4 else "int8"
        elif qc.get("quant_method") == "fbgemm_fp8":
            scheme = "FP8 per-row (fbgemm)"
    quantized = bool(qc) or (fmt not in (None, "", "unquantized", "bf16", "none"))
    text = " ".join(str(x) for x in (fmt, scheme) if x).lower()
    method = None
    if quantized:
        if "fp8" in text or "float8" in text or "f8" in text:
            method = "fp8"
        elif "int4" in text or "w4" in text or "nf4" in text or "fp4" in text or bits == 4:
            method = "int4"
        elif "int8" in text or "w8" in text or bits == 8:
            method = "int8"
    backend_tag = None
    if fmt == "compressed-tensors" or qc.get("quant_method") == "compressed-tensors":
        backend_tag = "compressed-tensors"
    elif (fmt or "").startswith("fbgemm") or qc.get("quant_method") == "fbgemm_fp8":
        backend_tag = "fbgemm"
    elif (fmt or "").startswith(("bnb", "bitsandbytes")) or qc.get("quant_method") == "bitsandbytes":
        backend_tag = "bitsandbytes"
    if backend is None and backend_tag:
        backend = {"compressed-tensors": "llm-compressor"}.get(backend_tag, backend_tag)
    return {"quantized": quantized, "method": method, "scheme": scheme, "backend": backend, "format": fmt,
            "backend_tag": backend_tag}


def kept_modules(report: dict[str, Any] | None, config: dict[str, Any] | None) -> list[str]:
    rep_kept = (report or {}).get("kept_modules")
    if isinstance(rep_kept, list):
        return [str(k) for k in rep_kept]
    qc = (config or {}).get("quantization_config")
    if isinstance(qc, dict):
        for key in ("ignore", "modules_to_not_convert", "llm_int8_skip_modules"):
            if isinstance(qc.get(key), list):
                return [str(k) for k in qc[key]]
    return []


def _kept_summary(kept: list[str]) -> list[str]:
    """Group kept module names by component (router, vision, lm_head, ...) for a one-line summary."""
    groups: dict[str, int] = {}
    for k in kept:
        name = k[3:] if k.startswith("re:") else k
        m = re.match(r"[\w.]*", name)  # a regex entry: its literal prefix ("vision_model\\..*" -> vision_model)
        name = (m.group(0) if m else name).rstrip(".")
        tower = name.split(".")[0]
        comp = {"vision_model": "vision", "multi_modal_projector": "projector"}.get(tower) or component(name + ".weight")
        groups[comp] = groups.get(comp, 0) + 1
    return [f"{c} ({n})" for c, n in sorted(groups.items())]


def _is_multimodal(config: dict[str, Any] | None) -> bool:
    cfg = config or {}
    archs = cfg.get("architectures") or []
    return "vision_config" in cfg or any("ConditionalGeneration" in str(a) for a in archs)


def _num(x: Any, fmt: str = ".2e") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "?"


def _front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _report_section(report: dict[str, Any]) -> list[str]:
    lines = ["## Quantization report", ""]
    ratio = report.get("compression_ratio")
    lines.append(f"- weights: {human_size(report.get('input_bytes'))} → {human_size(report.get('output_bytes'))}"
                 + (f" ({ratio:.2f}× smaller)" if isinstance(ratio, (int, float)) else ""))
    comps = report.get("components")
    if isinstance(comps, dict) and comps:
        lines += ["", "| component | tensors | mean relative error | max relative error |", "|---|---:|---:|---:|"]
        for name, c in sorted(comps.items()):
            if isinstance(c, dict):
                lines.append(f"| {name} | {c.get('tensors', '?')} | {_num(c.get('mean_rel_error'))} | "
                             f"{_num(c.get('max_rel_error'))} |")
    worst = report.get("worst_tensors")
    if isinstance(worst, list) and worst:
        lines += ["", "Largest relative errors:", ""]
        for w in worst[:5]:
            if isinstance(w, dict):
                err = w.get("max_expert_rel_error", w.get("rel_error"))
                lines.append(f"- `{w.get('name', '?')}`: {_num(err)}")
    lines += ["", "Relative error is ‖W − dequant(Q(W))‖ / ‖W‖ per tensor (full figures in "
              "`quantization_report.json`).", ""]
    return lines


def _suggested_gpus(root: Path) -> int:
    """Tensor-parallel size for the vLLM snippet: weights + 20% over 80 GB GPUs, rounded up to a power of 2."""
    try:
        size = sum(p.stat().st_size for p in root.glob("*.safetensors"))
    except OSError:
        size = 0
    need = max(1, math.ceil(size * 1.2 / 80e9))
    return min(8, 1 << (need - 1).bit_length())


def _usage_section(repo_id: str, q: dict[str, Any], multimodal: bool, gpus: int) -> list[str]:
    if multimodal:
        load = ("from transformers import AutoProcessor, Llama4ForConditionalGeneration\n\n"
                f'processor = AutoProcessor.from_pretrained("{repo_id}")\n'
                f'model = Llama4ForConditionalGeneration.from_pretrained("{repo_id}", device_map="auto")')
    else:
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", device_map="auto")')
    lines = ["## How to use", "", "With transformers:", "", "```python", load, "```", ""]
    if q.get("backend_tag") == "fbgemm":
        lines += ["The fbgemm FP8 kernels need an H100-class GPU and `fbgemm-gpu-genai` matching your torch.", ""]
    if q.get("backend_tag") != "bitsandbytes":
        tp = f" --tensor-parallel-size {gpus}" if gpus > 1 else ""
        lines += ["With vLLM:", "", "```bash", f"vllm serve {repo_id}{tp} --max-model-len 32768", "```", ""]
    lines += ["Download it verified (and only the text model's shards, if you like) with llama4ctl:", "", "```bash",
              f"llama4ctl download {repo_id} --local-dir ./model [--components text]", "```", ""]
    return lines


def _public_command(cmd: list[Any]) -> list[str]:
    """The command as run, without the machine's absolute paths (a card is public): those become base names."""
    words = [str(c) for c in cmd]
    return ["llama4ctl", *(os.path.basename(w.rstrip("/")) if os.path.isabs(w) else w for w in words[1:])]


def build_model_card(src: str | Path, *, repo_id: str, base_model: str | None = None,
                     dedup: dict[str, Any] | None = None) -> str:
    """README.md text for the checkpoint in `src` (to be pushed to `repo_id`).

    `dedup`, when given, is an estimate of Xet chunk reuse against the base model (keys: `reused_bytes`,
    `total_bytes`, optionally `base`), added as its own section; otherwise the section is left out.
    """
    root = Path(src)
    provenance = _read_json(root / "llama4ctl.json")
    report = _read_json(root / "quantization_report.json")
    config = _read_json(root / "config.json")
    base = resolve_base_model(root, provenance, config, base_model)
    q = describe_quantization(provenance, report, config)
    multimodal = _is_multimodal(config)
    kept = kept_modules(report, config)

    tags = ["llama4", "llama4ctl"]
    for t in (q["method"], q["backend_tag"]):
        if t and t not in tags:
            tags.append(t)
    tags.append("quantized" if q["quantized"] else "safetensors")
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
        if q["quantized"]:
            meta["base_model_relation"] = "quantized"
    meta.update({"license": "other", "license_name": "llama4", "license_link": LICENSE_LINK,
                 "library_name": "transformers",
                 "pipeline_tag": "image-text-to-text" if multimodal else "text-generation",
                 "tags": tags})

    name = repo_id.split("/")[-1]
    lines = [f"# {name}", ""]
    what = (f"{q['method'].upper() if q['method'] else 'Quantized'} quantization" if q["quantized"]
            else "A re-sharded copy")
    of = f" of [{base}](https://huggingface.co/{base})" if base else ""
    lines += [f"{what}{of}, produced with llama4ctl from the safetensors weights, tensor by tensor.", ""]
    if q["quantized"]:
        lines += ["## Quantization", "", "| | |", "|---|---|",
                  f"| method | {q['method'] or '?'} |", f"| scheme | {q['scheme'] or '?'} |",
                  f"| backend | {q['backend'] or '?'} |", f"| format | {q['format'] or '?'} |", ""]
        if kept:
            lines += [f"Kept in BF16 ({len(kept)} modules): {', '.join(_kept_summary(kept))}.", ""]
            lines += ["<details><summary>all kept modules</summary>", "", "```"]
            lines += kept[:500] + ([f"... and {len(kept) - 500} more"] if len(kept) > 500 else [])
            lines += ["```", "", "</details>", ""]
        else:
            lines += [f"Kept in BF16 by default: {', '.join(sorted(KEPT_IN_BF16))}.", ""]
    if report:
        lines += _report_section(report)
    if dedup and isinstance(dedup.get("total_bytes"), (int, float)) and dedup.get("total_bytes"):
        share = 100.0 * float(dedup.get("reused_bytes") or 0) / float(dedup["total_bytes"])
        lines += ["## Storage dedup estimate", "",
                  f"Xet chunk reuse against {base or 'the base model'}: {share:.1f}% of "
                  f"{human_size(dedup['total_bytes'])} already stored.", ""]
    lines += _usage_section(repo_id, q, multimodal, _suggested_gpus(root))
    lines += ["## Provenance", ""]
    if provenance:
        cmd = provenance.get("command")
        cmd_text = shlex.join(_public_command(cmd)) if isinstance(cmd, list) else "?"
        lines += [f"- llama4ctl {provenance.get('llama4ctl_version', '?')}, {provenance.get('created', '?')}",
                  "- command:", "", "  ```bash", f"  {cmd_text}", "  ```", ""]
        source = provenance.get("source")
        if isinstance(source, dict) and source.get("revision"):
            lines += [f"- source revision: `{source['revision']}`", ""]
    else:
        from llama4ctl import __version__

        lines += [f"- uploaded with llama4ctl {__version__} (no llama4ctl.json in the folder)", ""]
    lines += ["## License", "",
              f"Llama 4 is licensed under the [Llama 4 Community License]({LICENSE_LINK}). Built with Llama.", ""]
    return _front_matter(meta) + "\n" + "\n".join(lines).rstrip() + "\n"
