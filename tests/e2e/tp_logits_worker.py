"""Run under torchrun by tests/e2e/test_run.py: load MODEL as `llama4ctl run` does (tensor parallel), run one
forward pass over PROMPT_IDS and let rank 0 write the last position's logits to OUT (safetensors), with each fast
FP8 MoE layer's output for the same seeded input (`moe_outputs`: the residual stream hides small MoE errors)."""

import json
import sys

import torch
from safetensors.torch import save_file

from llama4ctl import generate
from llama4ctl.runner import RunRequest, load_for_run, placement


def moe_outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{"moe.<layer>": output} of every Fp8Llama4TextMoe for one seeded input (identical on every rank)."""
    from llama4ctl.moe_fp8 import Fp8Llama4TextMoe

    outs = {}
    for name, m in model.named_modules():
        if isinstance(m, Fp8Llama4TextMoe):
            x = torch.randn(6, m.hidden_dim, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
            outs["moe." + name.split("layers.")[-1].split(".")[0]] = m(x.to(m.experts.w13.device))[0].float().cpu()
    return outs


def main() -> None:
    model_dir, out, ids, *flags = sys.argv[1:]
    req = RunRequest(model=model_dir, prompt="-", load_in="fp8" if "--load-in-fp8" in flags else None)
    config, _ = generate.read_config(model_dir)
    fmt = generate.checkpoint_format(config)
    device_map, on_cuda = placement("auto", tensor_parallel=True)
    loaded = load_for_run(req, config, fmt, device_map=device_map, on_cuda=on_cuda, tp=True)
    with torch.no_grad():
        input_ids = torch.tensor([json.loads(ids)], device=loaded.model.device)
        logits = loaded.model(input_ids=input_ids).logits[0, -1].float().cpu()
        tensors = {"logits": logits, **moe_outputs(loaded.model)}
    if generate.rank() == 0:
        save_file({k: v.contiguous() for k, v in tensors.items()}, out)
        print(json.dumps({"fp8_moe": loaded.info["fp8_moe"], "fp8_dense": loaded.info["fp8_dense"]}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
