"""`llama4ctl run MODEL`: generate from any checkpoint the toolkit produces, text and images, timed."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt, RevisionOpt, TokenOpt
from llama4ctl.cli._output import Output, human_size

HELP = """Generate from a checkpoint: BF16, fbgemm_fp8, compressed-tensors or bitsandbytes, local or on the Hub.

The prompt comes from --prompt or stdin and goes through the checkpoint's chat template (--system adds a
system turn); --image (repeatable, path or URL) sends images through the checkpoint's processor, which needs
torchvision. The reply streams to the terminal as it is generated (on stderr, like all human output; --json
prints one document on stdout instead) and a last line sums up: tokens, time to first token, tokens/s, peak
host and GPU memory.

--load-in fp8 quantizes a BF16 checkpoint's routed experts at load (llama4ctl's row-wise FP8) and runs them
through the fast FP8 MoE: routed tokens only, grouped FP8 GEMMs (torch._scaled_grouped_mm on H100-class GPUs).
fbgemm_fp8 and compressed-tensors FP8 checkpoints get the same path on such GPUs (--fp8-moe off keeps
transformers' own modules); on that path their dense FP8 layers are dequantized to BF16 (--fp8-dense keep
leaves them FP8: least memory, slower decoding). --load-in int4|int8 quantizes on the fly with bitsandbytes.

Several GPUs: `torchrun --nproc-per-node N -m llama4ctl run MODEL --prompt ...` runs tensor parallel
(transformers' tp_plan="auto"); only rank 0 prints. FP8 checkpoints and --load-in fp8 run there through the fast
FP8 MoE, each rank holding a slice of every expert, with BF16 dense layers. Without torchrun, --device-map auto
spreads layers over the visible GPUs.
"""


def _read_prompt(prompt: str | None) -> str:
    if prompt is not None:
        text = prompt
    else:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise typer.BadParameter("under torchrun, pass the prompt with --prompt (stdin is not shared by ranks)")
        if sys.stdin is None or sys.stdin.isatty():
            raise typer.BadParameter("give the prompt with --prompt TEXT or on stdin")
        text = sys.stdin.read().rstrip("\n")
    if not text.strip():
        raise typer.BadParameter("the prompt is empty")
    return text


def run_cmd(
    model: Annotated[str, typer.Argument(help="Checkpoint directory or Hub repo id.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The user message (default: read stdin).")] = None,
    image: Annotated[list[str] | None, typer.Option("--image", help="Image path or http(s) URL (repeatable).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate.")] = 256,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature; 0 = greedy (default: the checkpoint's generation_config).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling probability mass.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.")] = None,
    load_in: Annotated[str | None, typer.Option("--load-in", help="Quantize a BF16 checkpoint at load: int4, int8 (bitsandbytes) or fp8 (llama4ctl FP8 MoE).")] = None,
    device_map: Annotated[str, typer.Option("--device-map", help="auto (GPUs if any, else CPU), cpu or cuda.")] = "auto",
    attn: Annotated[str | None, typer.Option("--attn", help="Attention implementation: sdpa, flex_attention or eager (default: transformers' choice).")] = None,
    fp8_moe: Annotated[str, typer.Option("--fp8-moe", help="FP8 MoE kernel: auto, grouped (torch._scaled_grouped_mm), fbgemm, reference (pure torch) or off (transformers' modules).")] = "auto",
    fp8_dense: Annotated[str, typer.Option("--fp8-dense", help="With the fast FP8 MoE: bf16 dequantizes the dense FP8 layers (attention, shared expert; ~3% of Llama 4's weights) for decoding speed, keep leaves them FP8 (least memory).")] = "bf16",
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay the fast FP8 MoE's decode steps from CUDA graphs (one launch per layer instead of ~25).")] = True,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")] = True,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    lead = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun only rank 0 prints (errors excepted)
    out = Output(json_mode=json_ and lead, quiet=quiet or not lead, debug=debug)
    ok = False
    try:
        with handled(out):
            from llama4ctl.runner import RunRequest, run
            from llama4ctl.schemas import document

            req = RunRequest(model=model, prompt=_read_prompt(prompt), images=tuple(image or ()), system=system,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             load_in=load_in, device_map=device_map, attn=attn, fp8_moe=fp8_moe, fp8_dense=fp8_dense,
                             cuda_graphs=cuda_graphs, revision=revision, token=token)
            try:
                req.check()
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
            show_text = lead and not json_
            streaming = stream and show_text
            res = run(req, on_text=_write if streaming else None, note=out.warn if lead else None,
                      status=out.info if lead and sys.stderr.isatty() else None, verbose=debug)
            if show_text:
                if not streaming:
                    _write(res["text"])
                _write("\n")
            out.result(document("run", res), lambda c: render(c, res))
            ok = True
    finally:
        from llama4ctl.runner import finish_distributed

        finish_distributed(ok)


run_cmd.__doc__ = HELP


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def summary_line(res: dict[str, Any]) -> str:
    ttft = f"{res['ttft_s']:.2f} s" if res["ttft_s"] is not None else "-"
    rate = f"{res['tokens_per_s']:.1f} tok/s" if res["tokens_per_s"] is not None else "- tok/s"
    gpu = human_size(res["peak_gpu_bytes"]) if res["peak_gpu_bytes"] is not None else "none"
    moe = res.get("fp8_moe") or {}
    how = res["format"] + (f", load-in {res['load_in']}" if res.get("load_in") else "")
    if moe.get("moe_layers"):
        how += f", FP8 MoE {moe['backend']}" + (" + CUDA graphs" if (moe.get("graphs") or {}).get("captured") else "")
    if (res.get("fp8_dense") or {}).get("layers"):
        how += f", {res['fp8_dense']['layers']} dense FP8 layers in BF16"
    if res.get("world_size", 1) > 1:
        how += f", tensor parallel x{res['world_size']}"
    return (f"{res['tokens']} tokens · first token {ttft} · {rate} · peak host {human_size(res['peak_host_bytes'])}"
            f" · peak GPU {gpu} · {how} · load {res['load_s']:.1f} s")


def render(console: Any, res: dict[str, Any]) -> None:
    console.print(summary_line(res), markup=False)
