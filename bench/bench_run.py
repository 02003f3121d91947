"""`run` on an H100: BF16 vs transformers' fbgemm_fp8 vs llama4ctl's fast FP8 MoE (and compressed-tensors FP8).

usage: python bench/bench_run.py [--workdir /tmp/bench-run] [--new-tokens 64] [--out results.json] [--skip-micro]
                                 [--only WORD ...]

1. builds a Maverick-shaped random checkpoint (~2.1 GB BF16: hidden 1024, 128 experts of 576, 8 layers of which
   4 MoE, vocab 32000) with llama4ctl.fixtures.build_random_checkpoint, and quantizes it on the GPU to fbgemm_fp8
   and to compressed-tensors FP8_DYNAMIC with llama4ctl's own quantizer;
2. runs each variant in its own process (a kernel crash or leak cannot spoil the others): load on cuda, weights
   memory (allocated after load), peak GPU memory, decode tok/s at batch 1 and 16 (`runner.generate_timed`,
   exactly --new-tokens per sequence, after a warm-up), last-position logits of a fixed batch and 32 greedy
   tokens, compared with BF16 (relative logits error, top-1 agreement, greedy token agreement);
3. (unless --skip-micro) one MoE layer at Scout scale (16 experts, hidden 5120, expert dim 8192) at 1 / 16 /
   256 / 4096 tokens: transformers BF16 (dense bmm), transformers fbgemm_fp8 experts (Python loop over experts),
   llama4ctl fast FP8 (grouped and fbgemm backends), milliseconds per forward and output error vs BF16.
Prints a markdown table (for bench/RESULTS.md); --out also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(shape="maverick", hidden_size=1024, expert_intermediate_size=576, mlp_intermediate_size=4096,
             num_experts=128, num_layers=8, vocab_size=32000, max_shard_size="1GB", seed=0, tokenizer=True)
# wider layers, the same expert count: decode is bound by GPU work, not by Python and kernel launches (~7 GB)
WIDE = dict(SHAPE, hidden_size=2048, expert_intermediate_size=1024, mlp_intermediate_size=8192, max_shard_size="2GB")
TINY = dict(SHAPE, hidden_size=64, expert_intermediate_size=48, mlp_intermediate_size=96, num_experts=4,
            num_layers=4, vocab_size=512, max_shard_size="1MB")
PROMPT_LEN = 32

VARIANTS = [  # (label, checkpoint key, fp8_moe[:fp8_dense[:nographs]], load_in)
    ("BF16 (transformers)", "bf16", "off", None),
    ("BF16 --load-in fp8 (llama4ctl fast FP8)", "bf16", "auto", "fp8"),
    ("fbgemm_fp8 (transformers FbgemmFp8Llama4TextExperts)", "fbgemm", "off", None),
    ("fbgemm_fp8 + llama4ctl fast FP8 (grouped), dense layers kept FP8 (--fp8-dense keep)", "fbgemm",
     "grouped:keep", None),
    ("fbgemm_fp8 + llama4ctl fast FP8 (grouped), dense layers BF16, no CUDA graphs (--no-cuda-graphs)", "fbgemm",
     "grouped:bf16:nographs", None),
    ("fbgemm_fp8 + llama4ctl fast FP8 (grouped), dense layers BF16, CUDA graphs (default)", "fbgemm", "grouped", None),
    ("fbgemm_fp8 + llama4ctl fast FP8 (fbgemm grouped_stacked), dense layers BF16", "fbgemm", "fbgemm", None),
    ("compressed-tensors FP8 (transformers)", "ct", "off", None),
    ("compressed-tensors FP8 + llama4ctl fast FP8 (grouped), dense layers BF16", "ct", "grouped", None),
]


# ---------------------------------------------------------------------------------------------------------------
# One variant (child process)


def variant(path: str, fp8_moe: str, load_in: str | None, new_tokens: int, dump: Path, device: str = "cuda") -> dict:
    import torch

    from llama4ctl import generate
    from llama4ctl.runner import (
        RunRequest,
        generate_timed,
        load_for_run,
        load_tokenizer,
    )

    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated if cuda else (lambda: 0)
    peak = torch.cuda.max_memory_allocated if cuda else (lambda: 0)
    base = allocated()
    config, _ = generate.read_config(path)
    fmt = generate.checkpoint_format(config)
    device_map = "cuda" if cuda else None
    fp8_moe, _, rest = fp8_moe.partition(":")
    fp8_dense, _, graphs = rest.partition(":")
    req = RunRequest(model=path, prompt="-", load_in=load_in, fp8_moe=fp8_moe, fp8_dense=fp8_dense or "bf16",
                     cuda_graphs=graphs != "nographs",
                     device_map=device or "cpu",
                     max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    generate.check_environment(fmt, load_in=load_in, on_cuda=cuda)
    loaded = load_for_run(req, config, fmt, device_map=device_map, on_cuda=cuda, tp=False)
    model, tok = loaded.model, load_tokenizer(path)
    if cuda:
        torch.cuda.synchronize()
    weights = allocated() - base if cuda else loaded.info["weights_bytes"]
    load_peak = peak() - base
    gen = torch.Generator().manual_seed(0)
    vocab = config.get("vocab_size") or config["text_config"]["vocab_size"]
    ids16 = torch.randint(0, vocab - 128, (16, PROMPT_LEN), generator=gen).to(model.device)
    out = {"format": fmt, "fp8_moe": loaded.info["fp8_moe"], "fp8_dense": loaded.info.get("fp8_dense"), "weights_bytes": weights, "load_peak_bytes": load_peak,
           "load_s": loaded.info["load_s"]}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for batch in (1, 16):
        inputs = {"input_ids": ids16[:batch], "attention_mask": torch.ones_like(ids16[:batch])}
        generate_timed(model, inputs, tok, max_new_tokens=8, temperature=0, ignore_eos=True)  # warm-up
        runs = [generate_timed(model, inputs, tok, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
                for _ in range(2)]
        best = max(runs, key=lambda r: r["tokens_per_s"])
        out[f"b{batch}_tokens_per_s"] = best["tokens_per_s"]
        out[f"b{batch}_ttft_s"] = best["ttft_s"]
        out[f"b{batch}_tokens"] = best["tokens"]
    out["generate_peak_bytes"] = peak() - base
    if (loaded.info["fp8_moe"] or {}).get("moe_layers"):
        from llama4ctl.moe_fp8 import graph_stats

        out["graphs"] = graph_stats(model)
    with torch.inference_mode():
        logits = model(input_ids=ids16).logits[:, -1].float().cpu()
        greedy = model.generate(input_ids=ids16[:1], attention_mask=torch.ones_like(ids16[:1]), max_new_tokens=32,
                                min_new_tokens=32, do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.save({"logits": logits, "greedy": greedy[0, PROMPT_LEN:].cpu()}, dump)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Paired rounds (child process): every variant loaded in one process, timed in rotation


PAIRED = [  # (label, checkpoint key, fp8_moe[:fp8_dense[:nographs]])
    ("BF16 (transformers)", "bf16", "off"),
    ("fbgemm_fp8 + fast FP8, no CUDA graphs", "fbgemm", "grouped:bf16:nographs"),
    ("fbgemm_fp8 + fast FP8 + CUDA graphs (default)", "fbgemm", "grouped"),
    ("compressed-tensors FP8 + fast FP8 + CUDA graphs (default)", "ct", "grouped"),
]


def paired(paths: dict[str, str], rounds: int, new_tokens: int) -> dict:
    """Between processes the same BF16 run drifted from 983 to 1718 tok/s; within one process, alternating the
    variants round by round, each round's ratio compares runs made seconds apart."""
    import gc

    import torch

    from llama4ctl import generate
    from llama4ctl.moe_fp8 import graph_stats
    from llama4ctl.runner import (
        RunRequest,
        load_for_run,
        load_tokenizer,
    )

    models = []
    for label, key, spec in PAIRED:
        if key not in paths:
            continue
        fp8_moe, _, rest = spec.partition(":")
        fp8_dense, _, graphs = rest.partition(":")
        config, _ = generate.read_config(paths[key])
        fmt = generate.checkpoint_format(config)
        req = RunRequest(model=paths[key], prompt="-", fp8_moe=fp8_moe, fp8_dense=fp8_dense or "bf16",
                         cuda_graphs=graphs != "nographs", device_map="cuda", max_new_tokens=new_tokens,
                         temperature=0, ignore_eos=True)
        gc.collect()  # an earlier variant's load garbage must not count against (or for) this one
        before = torch.cuda.memory_allocated()
        loaded = load_for_run(req, config, fmt, device_map="cuda", on_cuda=True, tp=False)
        gc.collect()
        models.append((label, loaded.model, torch.cuda.memory_allocated() - before))
    figures = rotate([(label, model) for label, model, _w in models], load_tokenizer(paths["bf16"]), rounds,
                     new_tokens)
    out = []
    for (label, model, weights), timed in zip(models, figures):
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        out.append({"label": label, "weights_bytes": weights, "graphs": graph_stats(model), "module_hooks": hooks,
                    "modules": sum(1 for _ in model.modules()), **timed})
    return {"rows": out, "rounds": rounds}


def rotate(models: list[tuple[str, Any]], tok: Any, rounds: int, new_tokens: int) -> list[dict]:
    """Decode tok/s of each (label, model) at batch 1 and 16, timed in rotation after a warm-up (which also
    captures CUDA graphs): per model the median, min, max and the median / worst per-round ratio to the first."""
    import statistics

    import torch

    from llama4ctl.runner import generate_timed

    vocab = models[0][1].config.get_text_config().vocab_size
    ids = torch.randint(0, vocab - 128, (16, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    ids = ids.to(models[0][1].device)
    rates: dict[tuple[str, int], list[float]] = {}
    for batch in (1, 16):
        inputs = {"input_ids": ids[:batch], "attention_mask": torch.ones_like(ids[:batch])}
        for _label, model in models:
            generate_timed(model, inputs, tok, max_new_tokens=8, temperature=0, ignore_eos=True)
        for r in range(rounds):
            for label, model in (models if r % 2 == 0 else models[::-1]):  # neither goes first every round
                res = generate_timed(model, inputs, tok, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
                rates.setdefault((label, batch), []).append(res["tokens_per_s"])
    base = models[0][0]
    out = []
    for label, _model in models:
        row: dict = {}
        for batch in (1, 16):
            mine, ref = rates[(label, batch)], rates[(base, batch)]
            row[f"b{batch}_median"] = statistics.median(mine)
            row[f"b{batch}_min"], row[f"b{batch}_max"] = min(mine), max(mine)
            row[f"b{batch}_ratio_median"] = statistics.median(a / b for a, b in zip(mine, ref))
            row[f"b{batch}_ratio_min"] = min(a / b for a, b in zip(mine, ref))
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# One MoE layer (child process)


def micro() -> list[dict]:
    import torch
    from transformers import Llama4TextConfig
    from transformers.integrations import fbgemm_fp8 as tfb
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    from llama4ctl import moe_fp8

    torch.manual_seed(0)
    cfg = Llama4TextConfig(hidden_size=5120, intermediate_size=8192, num_local_experts=16, num_experts_per_tok=1)
    dev = "cuda"
    with torch.device(dev):
        moe = Llama4TextMoe(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.02)
    have_fbgemm = moe_fp8.fbgemm_kernel() is not None
    fast = {}
    for backend in ("grouped", "fbgemm"):
        try:
            b = moe_fp8.pick_backend(dev, backend)
            fast[backend] = moe_fp8.Fp8Llama4TextMoe(moe, moe_fp8.Fp8GroupedExperts.from_bf16(moe.experts, cfg, backend=b))
        except Exception as e:  # noqa: BLE001 - report, keep going
            fast[backend] = e
    tmoe = None
    if have_fbgemm:  # transformers' own FP8 experts, filled from the same rows (same bytes as the fbgemm format)
        tfb.quantize_fp8_per_row = tfb.get_quantize_fp8_per_row()
        with torch.device(dev):
            tx = tfb.FbgemmFp8Llama4TextExperts(cfg)
        ref = fast["grouped"] if not isinstance(fast["grouped"], Exception) else None
        src = ref.experts if ref is not None else moe_fp8.Fp8GroupedExperts.from_bf16(moe.experts, cfg)
        with torch.no_grad():
            tx.gate_up_proj.copy_(src.w13.transpose(1, 2))
            tx.gate_up_proj_scale.copy_(src.s13[:, None, :])
            tx.down_proj.copy_(src.w2.transpose(1, 2))
            tx.down_proj_scale.copy_(src.s2[:, :, None])
            tx.input_scale_ub = torch.tensor([moe_fp8.DEFAULT_SCALE_UB], device=dev)
        with torch.device("meta"):
            tmoe = Llama4TextMoe(cfg)  # every submodule is replaced below: nothing stays on meta
        tmoe.router, tmoe.shared_expert, tmoe.experts = moe.router, moe.shared_expert, tx

    def timed(mod, x, reps=20):
        with torch.inference_mode():
            for _ in range(3):
                mod(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                y = mod(x)[0]
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e3, y.float()

    rows = []
    for tokens in (1, 16, 256, 4096):
        x = torch.randn(tokens, 5120, device=dev, dtype=torch.bfloat16)
        bf_ms, bf_y = timed(moe, x)
        row = {"tokens": tokens, "bf16_dense_ms": bf_ms}
        cands = {"transformers_fbgemm": tmoe, **{f"fast_{k}": v for k, v in fast.items()}}
        for name, mod in cands.items():
            if mod is None or isinstance(mod, Exception):
                row[f"{name}_ms"] = None
                row[f"{name}_error"] = str(mod)[:200] if mod is not None else "fbgemm-gpu-genai not installed"
                continue
            try:
                ms, y = timed(mod, x, reps=5 if name == "transformers_fbgemm" else 20)
                row[f"{name}_ms"] = ms
                row[f"{name}_rel_err_vs_bf16"] = float((y - bf_y).norm() / bf_y.norm())
            except Exception as e:  # noqa: BLE001
                row[f"{name}_ms"] = None
                row[f"{name}_error"] = " ".join(str(e).split())[:200]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Orchestration (parent)


def _child(args: list[str], timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if not last.startswith("{"):  # the child died (a kernel crash, out of memory): keep the end of its stderr
        return {"error": f"exit {proc.returncode}: " + " ".join((proc.stderr or proc.stdout).split())[-600:]}
    return json.loads(last)


def _report_paired(args: argparse.Namespace, shape: dict, sizes: dict, doc: dict) -> None:
    import torch

    if "error" in doc:
        sys.exit(f"paired run failed: {doc['error']}")
    print(f"### `run`, paired rounds — {datetime.date.today()}\n")
    print(f"Command: `python bench/bench_run.py {' '.join(sys.argv[1:])}` on {torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__}. Checkpoint: Maverick-shaped random "
          f"({', '.join(f'{k}={v}' for k, v in shape.items() if k not in ('seed', 'tokenizer', 'max_shard_size'))}); "
          f"files BF16 {sizes['bf16'] / 1e9:.2f} GB, fbgemm_fp8 {sizes['fbgemm'] / 1e9:.2f} GB, compressed-tensors "
          f"{sizes['ct'] / 1e9:.2f} GB. All variants in one "
          f"process, timed in rotation ({doc['rounds']} rounds per batch size, order reversed every other round, "
          f"{args.new_tokens} new tokens, greedy); ratio = this variant's tok/s / BF16's in the same round.\n")
    print("| variant | tok/s b1 median (min–max) | tok/s b16 median (min–max) | b16 vs BF16: median ratio (lowest) "
          "| b1 vs BF16 | weights GB | × BF16 | CUDA graphs | module hooks |")
    print("|---|---|---|---|---|---|---|---|---|")
    bf = doc["rows"][0]["weights_bytes"]
    for r in doc["rows"]:
        g = r["graphs"]
        print(f"| {r['label']} | {r['b1_median']:.1f} ({r['b1_min']:.1f}–{r['b1_max']:.1f}) | {r['b16_median']:.0f} "
              f"({r['b16_min']:.0f}–{r['b16_max']:.0f}) | {r['b16_ratio_median']:.2f}× ({r['b16_ratio_min']:.2f}×) | "
              f"{r['b1_ratio_median']:.2f}× | {r['weights_bytes'] / 1e9:.2f} | {r['weights_bytes'] / bf:.2f} | "
              f"{g['captured']} captured, {g['replays']} replays | {r['module_hooks']} |")
    if args.out:
        args.out.write_text(json.dumps({"paired": doc, "sizes": sizes}, indent=2, default=str))


def _fmt(v, spec: str = ".1f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-run"))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--wide", action="store_true", help="hidden 2048, 128 experts of 1024 (~7 GB BF16) instead "
                    "of hidden 1024 / experts of 576 (~2.1 GB)")
    ap.add_argument("--only", nargs="+", metavar="WORD", help="run only the variants whose label contains one of "
                    "these words (BF16 (transformers), the reference, always runs)")
    ap.add_argument("--tiny", action="store_true", help="a tiny checkpoint on the CPU: checks this script's plumbing "
                    "(fbgemm variants then report their CUDA error), not a benchmark")
    ap.add_argument("--paired", type=int, metavar="ROUNDS", help="instead of one process per variant: BF16 and the "
                    "fbgemm_fp8 fast path with and without CUDA graphs, and compressed-tensors FP8, loaded in one process and timed in rotation, "
                    "ROUNDS times at batch 1 and 16 (median and per-round ratios)")
    ap.add_argument("--paired-child", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--variant", nargs=4, metavar=("PATH", "FP8_MOE", "LOAD_IN", "DUMP"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant or args.micro or args.paired_child:
        try:
            if args.micro:
                doc = {"rows": micro()}
            elif args.paired_child:
                doc = paired(dict(zip(("bf16", "fbgemm", "ct"), args.paired_child)), args.paired or 5, args.new_tokens)
            else:
                path, fp8_moe, load_in, dump = args.variant
                doc = variant(path, fp8_moe, None if load_in == "-" else load_in, args.new_tokens, Path(dump),
                              args.device)
        except Exception as e:  # noqa: BLE001 - one line for the table, the traceback on stderr
            import traceback

            traceback.print_exc()
            doc = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
        print(json.dumps(doc))
        return

    import torch

    from llama4ctl.fixtures import build_random_checkpoint
    from llama4ctl.jobs import plan_quantize, quantize
    from llama4ctl.quant.fp8 import fbgemm_kernel

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_run.py needs a CUDA GPU (--tiny checks the script on the CPU)")
    shape = TINY if args.tiny else WIDE if args.wide else SHAPE
    if args.tiny:
        args.skip_micro = True
        import compressed_tensors.quantization  # noqa: F401 - before the quantizer's background warm-up import
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.wide:
        work = work / "wide"
        work.mkdir(exist_ok=True)
    paths = {"bf16": work / "maverick-bf16", "fbgemm": work / "maverick-fbgemm-fp8", "ct": work / "maverick-ct-fp8"}
    t0 = time.perf_counter()
    if not (paths["bf16"] / "config.json").exists():
        build_random_checkpoint(paths["bf16"], overwrite=True, **shape)
    build_s = time.perf_counter() - t0
    if not (paths["fbgemm"] / "config.json").exists():
        quantize(plan_quantize(paths["bf16"], backend="fbgemm", max_shard_size="1GB"), paths["fbgemm"],
                 device=device, overwrite=True)
    if not (paths["ct"] / "config.json").exists() and \
            (not args.only or args.paired or any("compressed" in w for w in args.only)):
        quantize(plan_quantize(paths["bf16"], max_shard_size="1GB"), paths["ct"], device=device, overwrite=True)
    sizes = {k: sum(f.stat().st_size for f in p.glob("*.safetensors")) for k, p in paths.items()}  # 0 if skipped
    if args.paired:
        _report_paired(args, shape, sizes, _child(["--paired-child", str(paths["bf16"]), str(paths["fbgemm"]),
                                                   str(paths["ct"]),
                                                   "--paired", str(args.paired), "--new-tokens", str(args.new_tokens)]))
        return

    results = []
    chosen = [v for i, v in enumerate(VARIANTS) if i == 0 or not args.only or any(w in v[0] for w in args.only)]
    # BF16 again at the end: GPU speed drifts between processes (one run measured BF16 at 983 and another at
    # 1531 tok/s at batch 16), so ratios use the faster of the two BF16 runs
    chosen.append(("BF16 (transformers), again last", *VARIANTS[0][1:]))
    for label, key, fp8_moe, load_in in chosen:
        dump = work / f"dump-{len(results)}.pt"
        r = _child(["--variant", str(paths[key]), fp8_moe, load_in or "-", str(dump),
                    "--new-tokens", str(args.new_tokens), "--device", device])
        r.update(label=label, checkpoint=key, dump=str(dump))
        results.append(r)
        print(f"{label}: {json.dumps({k: v for k, v in r.items() if k != 'dump'})}", file=sys.stderr, flush=True)

    ref = torch.load(results[0]["dump"]) if "error" not in results[0] else None
    tfb = next((r for r in results if r["label"].startswith("fbgemm_fp8 (transformers") and "error" not in r), None)
    tfb_dump = torch.load(tfb["dump"]) if tfb else None
    for r in results:
        if "error" in r or ref is None:
            continue
        d = torch.load(r["dump"])
        r["logits_rel_err_vs_bf16"] = float((d["logits"] - ref["logits"]).norm() / ref["logits"].norm())
        r["top1_agreement_vs_bf16"] = float((d["logits"].argmax(-1) == ref["logits"].argmax(-1)).float().mean())
        r["greedy_agreement_vs_bf16"] = float((d["greedy"] == ref["greedy"]).float().mean())
        if tfb_dump is not None and r["checkpoint"] == "fbgemm":
            r["logits_rel_err_vs_transformers_fbgemm"] = float(
                (d["logits"] - tfb_dump["logits"]).norm() / tfb_dump["logits"].norm())
    micro_rows = [] if args.skip_micro else _child(["--micro"]).get("rows", [])

    bf = dict(results[0])
    last = results[-1]
    if "error" not in last and "error" not in bf:
        bf["b16_tokens_per_s"] = max(bf["b16_tokens_per_s"], last["b16_tokens_per_s"])
    print(f"### `run`: fast FP8 MoE vs transformers — {datetime.date.today()}\n")
    where = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--tiny: plumbing check, not a benchmark)"
    print(f"Command: `python bench/bench_run.py {' '.join(sys.argv[1:])}` on {where}, "
          f"torch {torch.__version__}, fbgemm kernels {'yes' if fbgemm_kernel() else 'no'}. Checkpoint: "
          f"Maverick-shaped random ({', '.join(f'{k}={v}' for k, v in shape.items() if k not in ('seed', 'tokenizer', 'max_shard_size'))}); "
          f"files BF16 {sizes['bf16'] / 1e9:.2f} GB, fbgemm_fp8 {sizes['fbgemm'] / 1e9:.2f} GB, "
          f"compressed-tensors {sizes['ct'] / 1e9:.2f} GB (built in {build_s:.0f} s). Decode tok/s = generated "
          f"tokens after the first / their time, all sequences, {args.new_tokens} new tokens, best of 2.\n")
    print("| variant | tok/s b1 | tok/s b16 | b16 vs BF16 | weights GB | × BF16 | peak GPU GB | logits rel err | "
          "top-1 / greedy agree | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['label']} | - | - | - | - | - | - | - | - | error: {r['error'][-200:]} |")
            continue
        ratio = r["b16_tokens_per_s"] / bf["b16_tokens_per_s"] if "b16_tokens_per_s" in bf else None
        wx = r["weights_bytes"] / bf["weights_bytes"] if "weights_bytes" in bf else None
        moe = r.get("fp8_moe") or {}
        notes = f"FP8 MoE: {moe['backend']} on {moe['moe_layers']} layers" if moe.get("moe_layers") else ""
        if (r.get("fp8_dense") or {}).get("layers"):
            notes += f"; {r['fp8_dense']['layers']} dense FP8 layers in BF16"
        if (r.get("graphs") or {}).get("captured"):
            notes += f"; {r['graphs']['captured']} CUDA graphs"
        elif (r.get("graphs") or {}).get("disabled"):
            notes += f"; CUDA graphs off: {r['graphs']['disabled'][:80]}"
        if "logits_rel_err_vs_transformers_fbgemm" in r:
            notes += f"; logits vs transformers fbgemm {r['logits_rel_err_vs_transformers_fbgemm']:.4f}"
        print(f"| {r['label']} | {_fmt(r['b1_tokens_per_s'])} | {_fmt(r['b16_tokens_per_s'])} | {_fmt(ratio, '.2f', '×')} | "
              f"{r['weights_bytes'] / 1e9:.2f} | {_fmt(wx, '.2f')} | {max(r['load_peak_bytes'], r['generate_peak_bytes']) / 1e9:.2f} | "
              f"{_fmt(r.get('logits_rel_err_vs_bf16'), '.4f')} | {_fmt(r.get('top1_agreement_vs_bf16'), '.0%')} / "
              f"{_fmt(r.get('greedy_agreement_vs_bf16'), '.0%')} | {notes} |")
    if micro_rows:
        print("\nOne MoE layer (16 experts, hidden 5120, expert dim 8192, top-1), ms per forward "
              "(rel. error vs BF16):\n")
        names = ["bf16_dense", "transformers_fbgemm", "fast_grouped", "fast_fbgemm"]
        print("| tokens | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for row in micro_rows:
            cells = []
            for n in names:
                ms = row.get(f"{n}_ms")
                err = row.get(f"{n}_rel_err_vs_bf16")
                cells.append("-" if ms is None else f"{ms:.3f}" + (f" ({err:.3f})" if err is not None else ""))
            print(f"| {row['tokens']} | " + " | ".join(cells) + " |")
        errors = {k: v for row in micro_rows for k, v in row.items() if k.endswith("_error")}
        for k, v in errors.items():
            print(f"\n{k}: {v}")
    if args.out:
        args.out.write_text(json.dumps({"variants": results, "micro": micro_rows, "sizes": sizes}, indent=2,
                                       default=str))


if __name__ == "__main__":
    main()
