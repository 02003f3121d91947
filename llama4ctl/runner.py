"""`run`: prompt -> inputs (chat template; the processor when images are given) -> streamed generation, timed.

The library half of `llama4ctl run`; no CLI concerns. `run()` reads the checkpoint's config, checks what its
format needs before loading anything (a GPU, a package), builds the inputs (so a missing image or image
processor fails in a second, not after a long load), loads the model through `generate.load_model`, optionally
swaps the Llama 4 experts for the fast FP8 MoE (`moe_fp8`), and generates with a streamer that times every step.

Figures (`generate_timed`):
- ttft_s: from the generate() call to the first generated token (prefill + first decode step);
- tokens_per_s: decode throughput after the first token, all sequences of the batch together;
- peak_host_bytes: peak resident set size of this process (getrusage), load included;
- peak_gpu_bytes: torch's peak allocated CUDA memory summed over visible GPUs (None without CUDA);
- startup_to_first_token_s: from the process start (interpreter start-up and imports included).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama4ctl.errors import Llama4ctlError, NotBuiltError

LOAD_IN = ("int4", "int8", "fp8")
DEVICE_MAPS = ("auto", "cpu", "cuda")
ATTN = ("sdpa", "flex_attention", "eager")
FP8_MOE = ("auto", "grouped", "fbgemm", "reference", "off")
FP8_DENSE = ("bf16", "keep")  # with the fast FP8 MoE: dense FP8 Linears dequantized for speed, or kept FP8


@dataclass
class RunRequest:
    model: str
    prompt: str
    images: tuple[str, ...] = ()
    system: str | None = None
    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    load_in: str | None = None
    device_map: str = "auto"
    attn: str | None = None
    fp8_moe: str = "auto"
    fp8_dense: str = "bf16"
    cuda_graphs: bool = True  # the fast FP8 MoE's decode steps replayed from CUDA graphs
    revision: str | None = None
    token: str | None = None
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)

    def check(self) -> None:
        """ValueError naming the bad option (the CLI turns it into a usage error, exit 2)."""
        for name, value, allowed in (("--load-in", self.load_in, LOAD_IN), ("--attn", self.attn, ATTN),
                                     ("--device-map", self.device_map, DEVICE_MAPS),
                                     ("--fp8-moe", self.fp8_moe, FP8_MOE),
                                     ("--fp8-dense", self.fp8_dense, FP8_DENSE)):
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("--temperature must be >= 0 (0 = greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("--top-p must be in (0, 1]")
        if self.load_in == "fp8" and self.fp8_moe == "off":
            raise ValueError("--load-in fp8 runs through the FP8 MoE path: it cannot be combined with --fp8-moe off")


@dataclass
class Loaded:
    model: Any
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Memory and time


def peak_host_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _cuda_devices() -> range:
    import torch

    return range(torch.cuda.device_count()) if torch.cuda.is_available() else range(0)


def reset_gpu_peaks() -> None:
    import torch

    for d in _cuda_devices():
        try:
            torch.cuda.reset_peak_memory_stats(d)
        except RuntimeError:  # "Invalid device argument": no allocation on that GPU yet, nothing to reset
            pass


def peak_gpu_bytes() -> int | None:
    import torch

    devs = _cuda_devices()
    return sum(torch.cuda.max_memory_allocated(d) for d in devs) if len(devs) else None


def gpu_allocated_bytes() -> int | None:
    import torch

    devs = _cuda_devices()
    return sum(torch.cuda.memory_allocated(d) for d in devs) if len(devs) else None


def weights_bytes(model: Any) -> int:
    """Bytes of the parameters and buffers (each storage once; a tensor-parallel rank counts its own shard)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        t = getattr(t, "_local_tensor", t)
        if t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def process_start_time() -> float | None:
    """Wall-clock time this process started (time.time() scale), for the command-to-first-token figure."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def load_tokenizer(model: str, *, revision: str | None = None, token: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, revision=revision, token=token)
    except (OSError, ValueError) as e:
        raise Llama4ctlError(f"cannot load the tokenizer ({' '.join(str(e).split())[:300]})", model,
                             hint="the checkpoint needs tokenizer.json / tokenizer_config.json") from None


def load_processor(model: str, *, revision: str | None = None, token: str | None = None) -> Any:
    """The checkpoint's Llama4Processor (tokenizer + image processor). The image processor needs torchvision."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model, revision=revision, token=token)
    except (ImportError, ValueError, OSError) as e:
        text = " ".join(str(e).split())
        if "torchvision" in text:
            raise Llama4ctlError("the Llama 4 image processor needs torchvision, which is not installed", model,
                                 hint="`pip install torchvision` (the build matching your torch), or run without "
                                      "--image") from None
        raise Llama4ctlError(f"cannot load the image processor ({text[:300]})", model,
                             hint="image input needs processor_config.json or preprocessor_config.json") from None


def load_image(spec: str) -> Any:
    """A PIL RGB image from a local path or an http(s) URL."""
    if spec.startswith(("http://", "https://")):
        from transformers.image_utils import load_image as fetch

        try:
            return fetch(spec).convert("RGB")
        except Exception as e:  # noqa: BLE001 - one handled error per image
            raise Llama4ctlError(f"cannot fetch the image ({' '.join(str(e).split())[:200]})", spec) from None
    from PIL import Image, UnidentifiedImageError

    path = Path(spec)
    if not path.is_file():
        raise Llama4ctlError("no such image file", path, hint="--image takes a file path or an http(s) URL")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise Llama4ctlError(f"not a readable image ({e})", path) from None


def messages(prompt: str, system: str | None, num_images: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    if num_images:
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
        out.append({"role": "user", "content": content})
    else:
        out.append({"role": "user", "content": prompt})
    return out


def build_inputs(tokenizer: Any, prompt: str, *, system: str | None = None, images: list[Any] | None = None,
                 processor: Any | None = None) -> dict[str, Any]:
    """Chat-templated prompt -> {"input_ids", "attention_mask"[, "pixel_values"]} on CPU.

    With images the processor turns each <|image|> placeholder into the image's tile/patch tokens and computes
    pixel_values; this is the one step that needs the image processor (torchvision).
    """
    images = images or []
    owner = processor if images and getattr(processor, "chat_template", None) else tokenizer
    if getattr(owner, "chat_template", None):
        text = owner.apply_chat_template(messages(prompt, system, len(images)), add_generation_prompt=True,
                                         tokenize=False)
        special = False  # the template writes <|begin_of_text|> itself
    else:
        if images:
            raise Llama4ctlError("this checkpoint has no chat template, so images cannot be placed in the prompt")
        text = (system + "\n\n" + prompt) if system else prompt
        special = True
    if images:
        enc = processor(images=images, text=text, return_tensors="pt", add_special_tokens=special)
    else:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=special)
    return dict(enc)


# ---------------------------------------------------------------------------------------------------------------
# Generation


class TimedStreamer:
    """A transformers streamer that stamps every decode step and (optionally) streams sequence 0's text."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None = None):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.steps = self.tokens = self.batch = 0
        self.ids: list[int] = []
        self._prompt_seen = False
        self._cache: list[int] = []
        self._printed = 0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() hands the prompt over first
            self._prompt_seen = True
            return
        flat = value.reshape(-1).tolist()  # [batch] new tokens; .tolist() waits for the GPU, so the stamp is real
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.batch = now, len(flat)
        self.t_last = now
        self.steps += 1
        self.tokens += len(flat)
        self.ids.append(int(flat[0]))
        if self.on_text is not None:
            self._cache.append(int(flat[0]))
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self._cache, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        new = text[self._printed:]
        if new:
            self.on_text(new)
        if text.endswith("\n") or final:
            self._cache, self._printed = [], 0
        else:
            self._printed = len(text)

    def end(self) -> None:
        if self.on_text is not None and self._cache:
            self._emit(final=True)


def generation_config(model: Any, *, max_new_tokens: int, temperature: float | None, top_p: float | None,
                      ignore_eos: bool) -> Any:
    """The checkpoint's generation_config with the command's overrides (temperature 0 = greedy)."""
    from transformers import GenerationConfig

    gc = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    gc.max_new_tokens = max_new_tokens
    if temperature is not None and temperature == 0:
        gc.do_sample = False
    else:
        if temperature is not None:
            gc.do_sample, gc.temperature = True, temperature
        if top_p is not None:
            gc.do_sample, gc.top_p = True, top_p
    if not gc.do_sample:
        gc.temperature = gc.top_p = gc.top_k = None
    if ignore_eos:
        gc.min_new_tokens = max_new_tokens
    return gc


def generate_timed(model: Any, inputs: dict[str, Any], tokenizer: Any, *, max_new_tokens: int,
                   temperature: float | None = None, top_p: float | None = None, ignore_eos: bool = False,
                   on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate with a timing streamer; returns text (sequence 0), token figures and timings."""
    import torch

    streamer = TimedStreamer(tokenizer, on_text)
    gc = generation_config(model, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           ignore_eos=ignore_eos)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, generation_config=gc, streamer=streamer)
    t_end = time.perf_counter()
    if streamer.t_first is None:
        return {"text": "", "token_ids": [], "tokens": 0, "ttft_s": None, "tokens_per_s": None,
                "generate_s": t_end - t0, "batch": int(inputs["input_ids"].shape[0])}
    after_first = streamer.tokens - streamer.batch
    decode_s = streamer.t_last - streamer.t_first
    rate = after_first / decode_s if after_first > 0 and decode_s > 0 else streamer.tokens / (streamer.t_last - t0)
    return {
        "text": tokenizer.decode(streamer.ids, skip_special_tokens=True),
        "token_ids": streamer.ids,
        "tokens": streamer.tokens,
        "ttft_s": streamer.t_first - t0,
        "tokens_per_s": rate,
        "generate_s": t_end - t0,
        "batch": streamer.batch,
        "first_token_wall": time.time() - (time.perf_counter() - streamer.t_first),
    }


# ---------------------------------------------------------------------------------------------------------------
# Loading


def placement(device_map: str, *, tensor_parallel: bool) -> tuple[str | None, bool]:
    """(device_map for from_pretrained, on CUDA?)."""
    import torch

    cuda = torch.cuda.is_available()
    if tensor_parallel:
        return None, cuda
    if device_map == "cpu":
        return None, False
    if device_map == "cuda":
        if not cuda:
            raise Llama4ctlError("--device-map cuda, but no CUDA GPU is visible", hint="use --device-map cpu or auto")
        return "cuda", True
    return ("auto", True) if cuda else (None, False)


def _load_in_bits(req: RunRequest, config: dict[str, Any], device_map: str | None, tp: bool) -> Any:
    """--load-in int4|int8: the on-the-fly bitsandbytes loader (experts included) of llama4ctl.onthefly."""
    try:
        from llama4ctl import onthefly
    except ImportError:
        raise NotBuiltError(f"--load-in {req.load_in} is not implemented yet: it needs the on-the-fly "
                            "bitsandbytes loader (experts included)",
                            hint="quantize ahead of time with `llama4ctl quantize`, or use --load-in fp8") from None
    return onthefly.load(req.model, config, bits=int(req.load_in[3:]), device_map=device_map,
                         attn=req.attn, tensor_parallel=tp, revision=req.revision, token=req.token)


def load_for_run(req: RunRequest, config: dict[str, Any], fmt: str, *, device_map: str | None, on_cuda: bool,
                 tp: bool, note: Callable[[str], None] | None = None) -> Loaded:
    from llama4ctl import generate

    note = note or (lambda _m: None)
    t0 = time.perf_counter()
    try:
        if req.load_in in ("int4", "int8"):
            model = _load_in_bits(req, config, device_map, tp)
        else:
            model = generate.load_model(req.model, config, device_map=device_map, attn=req.attn,
                                        tensor_parallel=tp, revision=req.revision, token=req.token)
    except ImportError as e:  # a package transformers asked for (its message names it)
        raise Llama4ctlError(f"loading needs a package that is missing: {' '.join(str(e).split())[:300]}",
                             req.model, hint="install the package named above") from None
    info: dict[str, Any] = {"format": fmt, "load_in": req.load_in, "tensor_parallel": tp,
                            "device": str(getattr(model, "device", "cpu"))}
    info["fp8_moe"] = fast_moe(model, req, fmt, on_cuda=on_cuda, tp=tp, note=note)
    info["fp8_dense"] = None
    if (info["fp8_moe"] or {}).get("moe_layers") and req.fp8_dense == "bf16":
        from llama4ctl.dense_fp8 import dense_to_bf16

        info["fp8_dense"] = dense_to_bf16(model)
    if tp and fmt in FP8_FORMATS:
        _ready_for_tensor_parallel(model, req)
    info["load_s"] = time.perf_counter() - t0
    report = getattr(model, "llama4ctl_load_report", None) or {}  # the on-the-fly loader counts bnb states too
    info["weights_bytes"] = report.get("weights_bytes") or weights_bytes(model)
    info["gpu_bytes_after_load"] = gpu_allocated_bytes()
    return Loaded(model, config, info)


# checkpoint formats whose experts the fast FP8 MoE takes over. transformers 5.17 loads them under
# tp_plan="auto" but cannot run them (fbgemm kernels get DTensor arguments, compressed-tensors' decompress hook
# fails): under torchrun llama4ctl.tp runs their shards through its own modules instead.
FP8_FORMATS = ("fbgemm_fp8", "compressed-tensors")


def _ready_for_tensor_parallel(model: Any, req: RunRequest) -> None:
    """Under torchrun, an FP8 checkpoint runs only once llama4ctl's modules hold all its quantized weights."""
    import torch

    from llama4ctl import tp
    from llama4ctl.moe_fp8 import Fp8GroupedExperts

    packed = (torch.float8_e4m3fn, torch.int8, torch.uint8, torch.int32)
    left = next((f"{m_name}.{n}" for m_name, m in model.named_modules() if not isinstance(m, Fp8GroupedExperts)
                 for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
                 if t is not None and tp.local(t).dtype in packed), None)
    if left is not None:
        raise Llama4ctlError(
            f"this checkpoint cannot run tensor parallel: {left} is still quantized and transformers 5.17 cannot "
            "run quantized tensor-parallel layers", req.model,
            hint="run without torchrun (--device-map auto spreads layers over the GPUs)")
    tp.drop_compressed_tensors_hook(model)  # nothing left for it to decompress; it fails on TP modules


def fast_moe(model: Any, req: RunRequest, fmt: str, *, on_cuda: bool, tp: bool,
             note: Callable[[str], None]) -> dict[str, Any] | None:
    """Swap Llama 4 experts for the fast FP8 MoE where asked or where it pays (always for FP8 checkpoints under
    tensor parallel: transformers cannot run those); returns moe_fp8's summary."""
    from llama4ctl import moe_fp8

    fp8_source = fmt in FP8_FORMATS
    if tp and fp8_source and req.fp8_moe != "off":
        if not on_cuda:
            note("tensor parallel on CPU runs the pure-torch reference FP8 MoE (slow; meant for tests)")
        try:
            return moe_fp8.convert_model(model, backend=req.fp8_moe, cuda_graphs=req.cuda_graphs)
        except ValueError as e:
            raise Llama4ctlError(str(e), hint="use --fp8-moe auto") from None
    if req.load_in == "fp8":
        if not on_cuda:
            note("--load-in fp8 on CPU runs the pure-torch reference FP8 MoE (slow; meant for tests): "
                 "the fast grouped FP8 GEMMs need an H100-class GPU")
        try:
            return moe_fp8.convert_model(model, backend=req.fp8_moe, quantize_bf16=True, cuda_graphs=req.cuda_graphs)
        except ValueError as e:
            raise Llama4ctlError(str(e), hint="use --fp8-moe auto") from None
    if req.fp8_moe == "off" or not fp8_source or tp:
        return None
    if req.fp8_moe == "auto":
        device = next(model.parameters()).device
        text = model.config.get_text_config()
        if moe_fp8.pick_backend(device, "auto", hidden=text.hidden_size, expert_dim=text.intermediate_size) != "grouped":
            return None  # transformers' own modules are the better choice without the grouped kernel
    try:
        return moe_fp8.convert_model(model, backend=req.fp8_moe, cuda_graphs=req.cuda_graphs)
    except ValueError as e:
        raise Llama4ctlError(str(e), hint="use --fp8-moe auto") from None


# ---------------------------------------------------------------------------------------------------------------
# The command


def _quiet_transformers(verbose: bool) -> None:
    from transformers.utils import logging as hf_logging

    if not verbose:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _set_seed(seed: int | None, tp: bool) -> int | None:
    """Same seed on every tensor-parallel rank (rank 0's random one when none is given), or the given one."""
    if tp:
        import torch.distributed as dist

        if seed is None and dist.is_available() and dist.is_initialized():
            box = [int.from_bytes(os.urandom(4), "little")]
            dist.broadcast_object_list(box, src=0)
            seed = box[0]
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    return seed


def run(req: RunRequest, *, on_text: Callable[[str], None] | None = None,
        note: Callable[[str], None] | None = None, status: Callable[[str], None] | None = None,
        verbose: bool = False) -> dict[str, Any]:
    """Load req.model, generate from req.prompt, return the run document's body (see module docstring).

    on_text receives the reply as it is generated; note gets warnings, status one line before the load."""
    from llama4ctl import generate

    req.check()
    note = note or (lambda _m: None)
    _quiet_transformers(verbose)
    tp = generate.world_size() > 1
    reset_gpu_peaks()
    config, _ = generate.read_config(req.model, revision=req.revision, token=req.token)
    fmt = generate.checkpoint_format(config)
    if tp and fmt.startswith("bitsandbytes"):  # transformers 5.17 fails sharding bnb's packed weights at load
        raise Llama4ctlError(f"a {fmt} checkpoint cannot run tensor parallel: transformers 5.17 cannot shard "
                             "bitsandbytes weights", req.model,
                             hint="run without torchrun (--device-map auto spreads layers over the GPUs)")
    if tp and fmt in FP8_FORMATS and (req.fp8_moe == "off" or req.fp8_dense == "keep"):
        raise Llama4ctlError(f"a {fmt} checkpoint under torchrun runs only through llama4ctl's FP8 MoE with BF16 "
                             "dense layers (transformers 5.17 cannot run quantized tensor-parallel layers)",
                             req.model, hint="drop --fp8-moe off / --fp8-dense keep, or run without torchrun")
    device_map, on_cuda = placement(req.device_map, tensor_parallel=tp)
    for warning in generate.check_environment(fmt, load_in=req.load_in, on_cuda=on_cuda):
        note(warning)
    if tp and req.device_map != "auto":
        note(f"--device-map {req.device_map} is ignored under torchrun: tensor parallel places each rank itself")

    arch = (config.get("architectures") or ["Llama4ForConditionalGeneration"])[0]
    if req.images and "vision_config" not in config:
        raise Llama4ctlError(f"this checkpoint is text-only ({arch}): it cannot take --image", req.model)
    tokenizer = load_tokenizer(req.model, revision=req.revision, token=req.token)
    processor = load_processor(req.model, revision=req.revision, token=req.token) if req.images else None
    images = [load_image(s) for s in req.images]
    inputs = build_inputs(tokenizer, req.prompt, system=req.system, images=images, processor=processor)

    if status is not None:
        where = "tensor parallel" if tp else ("GPU" if on_cuda else "CPU")
        status(f"loading {req.model} ({fmt}{', --load-in ' + req.load_in if req.load_in else ''}) on {where} …")
    loaded = load_for_run(req, config, fmt, device_map=device_map, on_cuda=on_cuda, tp=tp, note=note)
    model = loaded.model
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    seed = _set_seed(req.seed, tp)
    try:
        gen = generate_timed(model, inputs, tokenizer, max_new_tokens=req.max_new_tokens,
                             temperature=req.temperature, top_p=req.top_p, ignore_eos=req.ignore_eos, on_text=on_text)
    except Exception as e:
        if req.attn != "flex_attention" or isinstance(e, Llama4ctlError):
            raise
        first = " ".join(str(e).split())[:200]
        raise Llama4ctlError(f"flex_attention failed ({type(e).__name__}: {first})",
                             hint="flex_attention compiles kernels with torch.compile (a C++ compiler on CPU, "
                                  "Triton on GPU); use --attn sdpa") from None
    if (loaded.info.get("fp8_moe") or {}).get("moe_layers"):
        from llama4ctl.moe_fp8 import graph_stats

        loaded.info["fp8_moe"]["graphs"] = graph_stats(model)
    started = process_start_time()
    first_wall = gen.pop("first_token_wall", None)
    return {
        "text": gen["text"],
        "tokens": gen["tokens"],
        "ttft_s": gen["ttft_s"],
        "tokens_per_s": gen["tokens_per_s"],
        "peak_host_bytes": peak_host_bytes(),
        "peak_gpu_bytes": peak_gpu_bytes(),
        "model": req.model,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "images": len(images),
        "token_ids": gen["token_ids"],
        "generate_s": gen["generate_s"],
        "startup_to_first_token_s": (first_wall - started) if first_wall and started else None,
        "seed": seed,
        "world_size": generate.world_size(),
        **loaded.info,
    }


def finish_distributed(ok: bool = True) -> None:
    """Tear the process group down (torchrun) so every rank exits cleanly. After a failure no collective is
    attempted (the other ranks may never reach it); torchrun ends them when this rank exits non-zero."""
    if "torch.distributed" not in sys.modules:
        return
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if ok:
                dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
