"""`quantize --int4/--int8` and the on-the-fly loader: outputs load in transformers with 4/8-bit experts, run
close to BF16, dequantize to the original experts; kept modules are exact; inspect counts them right.

The source is a 128-aligned Scout-shaped multimodal checkpoint (hidden 256, expert intermediate 384 so that
H != 2I and an axis mix-up cannot pass, dense MLP 512, 2 layers, 4 experts): W4A16's groups of 128 need input
features that are multiples of 128, and bitsandbytes' CPU 4-bit kernel needs output features that are
multiples of 32 (the default tiny fixtures' 48-wide experts fail there with "N must be divisible by block_n").
Each format is quantized once per module and shared by the tests below.
"""

import json

import pytest
import torch

from llama4ctl.errors import PlanError
from llama4ctl.jobs import default_destination, plan_quantize, quantize
from llama4ctl.quant import bnb as bnbq
from llama4ctl.quant.int4 import dequantize, pack_int32, quantize as int_quantize, unpack_int32
from llama4ctl.quant.fp8 import relative_error
from tests.e2e._load import assert_loaded_cleanly, bits, load, logits, tensors

KEPT_MARKERS = ("router", "vision_model", "multi_modal_projector", "lm_head", "embed_tokens", "norm")
FORMATS = {
    "W4A16": dict(method="int4"),
    "W8A16": dict(method="int8"),
    "BNB-NF4": dict(method="int4", backend="bnb"),
    "BNB-INT8": dict(method="int8", backend="bnb"),
}
# logits of these random tiny models amplify weight error; the per-weight checks are the exact ones
LOGIT_TOLERANCE = {"W4A16": 0.35, "W8A16": 0.05, "BNB-NF4": 0.35, "BNB-INT8": 0.05}
EXPERT_TOLERANCE = {"W4A16": 0.12, "W8A16": 0.01, "BNB-NF4": 0.12, "BNB-INT8": 0.01}


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    from llama4ctl.fixtures import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("int") / "tiny-scout-256", shape="scout", hidden_size=256,
                                 expert_intermediate_size=384, mlp_intermediate_size=512, num_layers=2,
                                 max_shard_size="1MB")


@pytest.fixture(scope="module")
def reference(aligned_dir):
    model, _ = load(aligned_dir)
    return logits(model), tensors(aligned_dir)


@pytest.fixture(scope="module")
def outputs(aligned_dir, tmp_path_factory):
    made = {}
    root = tmp_path_factory.mktemp("int-out")

    def get(name):
        if name not in made:
            plan = plan_quantize(aligned_dir, max_shard_size="1MB", **FORMATS[name])
            res = quantize(plan, root / name, device="cpu", workers=2)
            assert res["shards_written"] > 1
            made[name] = root / name
        return made[name]

    return get


def _module(model, suffix):
    return next(m for n, m in model.named_modules() if n.endswith(suffix))


def _experts(src):
    name = next(k for k in src if k.endswith("experts.gate_up_proj"))
    prefix = name[: -len("gate_up_proj")]
    gu, down = src[name], src[prefix + "down_proj"]
    inter = gu.shape[-1] // 2
    for e in range(gu.shape[0]):
        for proj, original in (("gate_proj", gu[e][:, :inter].T), ("up_proj", gu[e][:, inter:].T),
                               ("down_proj", down[e].T)):
            yield f"{prefix}{e}.{proj}", original.contiguous()


# ------------------------------------------------------------------------------------ compressed-tensors


@pytest.mark.parametrize("name", ["W4A16", "W8A16"])
def test_compressed_tensors_int_loads_with_packed_experts_and_runs_close(name, outputs, reference):
    model, info = load(outputs(name))
    assert_loaded_cleanly(info)
    for suffix in ("layers.1.feed_forward.experts.3.down_proj", "language_model.model.layers.0.self_attn.q_proj"):
        module = _module(model, suffix)  # compressed on load; CPU decompresses to BF16 at the first forward
        assert module.weight_packed.dtype == torch.int32 and not hasattr(module, "weight")
        assert module.weight_scale.dtype == torch.bfloat16
        assert module.quantization_scheme.weights.num_bits == int(name[1])
    assert type(_module(model, "layers.0.feed_forward.experts")).__name__ == "SequentialLlama4TextExperts"
    assert _module(model, "layers.0.feed_forward.router").weight.dtype == torch.bfloat16
    ref, got = reference[0], logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE[name]
    assert model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("name", ["W4A16", "W8A16"])
def test_compressed_tensors_experts_are_the_originals_quantized(name, outputs, reference):
    q, n = tensors(outputs(name)), int(name[1])
    for module, original in _experts(reference[1]):
        packed, scale = q[f"{module}.weight_packed"], q[f"{module}.weight_scale"]
        assert q[f"{module}.weight_shape"].tolist() == list(original.shape)
        assert scale.shape == (original.shape[0], original.shape[1] // 128)
        expected_q, expected_s = int_quantize(original, n, 128)
        assert torch.equal(packed, pack_int32(expected_q, n)) and torch.equal(bits(scale), bits(expected_s))
        restored = dequantize(unpack_int32(packed, n, original.shape[1]), scale)
        assert relative_error(original, restored) < EXPERT_TOLERANCE[name], module


def test_compressed_tensors_int_config_and_kept_modules(outputs, reference):
    out = outputs("W4A16")
    q = tensors(out)
    kept = [k for k in reference[1] if any(m in k for m in KEPT_MARKERS)]
    assert kept and all(torch.equal(bits(reference[1][k]), bits(q[k])) for k in kept)
    assert not any(k.endswith("zero_point") for k in q) and not any(".experts.gate_up_proj" in k for k in q)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    group = qc["config_groups"]["group_0"]
    assert group["format"] == "pack-quantized" and group["targets"] == ["Linear"]
    assert group["weights"]["num_bits"] == 4 and group["weights"]["type"] == "int"
    assert group["weights"]["group_size"] == 128 and group["weights"]["symmetric"]
    assert group["input_activations"] is None
    assert "language_model.lm_head" in qc["ignore"] and "re:vision_model\\..*" in qc["ignore"]
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["scheme"] == "W4A16" and set(report["components"]) == {"attention", "shared_expert", "routed_experts"}


def test_group_size_that_does_not_divide_is_refused_with_a_hint(scout_dir):
    with pytest.raises(PlanError, match="group size 128 does not divide") as e:
        plan_quantize(scout_dir, method="int4")
    assert "--group-size 16" in e.value.hint and "--group-size -1" in e.value.hint


def test_per_channel_fallback_loads_and_runs_on_unaligned_dimensions(scout_dir, tmp_path):
    plan = plan_quantize(scout_dir, method="int4", group_size=-1, max_shard_size="200KB")
    quantize(plan, tmp_path / "q", device="cpu", workers=2)
    model, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)
    assert _module(model, "experts.0.down_proj").weight_scale.shape == (64, 1)
    ref, got = logits(load(scout_dir)[0]), logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < 0.35


# ------------------------------------------------------------------------------------------ bitsandbytes


def test_bnb_int8_loads_with_int8_experts_and_generates(outputs, reference):
    model, info = load(outputs("BNB-INT8"))
    assert_loaded_cleanly(info)
    for suffix in ("layers.1.feed_forward.experts.3.down_proj", "layers.0.feed_forward.shared_expert.up_proj",
                   "language_model.model.layers.0.self_attn.o_proj"):
        module = _module(model, suffix)
        assert type(module).__name__ == "Linear8bitLt" and type(module.weight).__name__ == "Int8Params"
        assert module.weight.dtype == torch.int8 and module.weight.SCB.dtype == torch.float32
    for suffix in ("layers.0.feed_forward.router", "lm_head", "multi_modal_projector.linear_1"):
        assert _module(model, suffix).weight.dtype == torch.bfloat16
    ref, got = reference[0], logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE["BNB-INT8"]
    assert model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_bnb_nf4_loads_with_4bit_experts(outputs, reference):
    model, info = load(outputs("BNB-NF4"))
    assert_loaded_cleanly(info)
    expert = _module(model, "layers.1.feed_forward.experts.3.down_proj")
    assert type(expert).__name__ == "Linear4bit" and type(expert.weight).__name__ == "Params4bit"
    assert expert.weight.dtype == torch.uint8 and expert.weight.numel() == 256 * 384 // 2
    qs = expert.weight.quant_state
    assert qs.quant_type == "nf4" and qs.nested and tuple(qs.shape) == (256, 384) and qs.dtype == torch.bfloat16
    assert type(_module(model, "language_model.model.layers.0.self_attn.q_proj")).__name__ == "Linear4bit"
    # bitsandbytes' CPU 4-bit kernel runs here because every output dimension is a multiple of 32
    ref, got = reference[0], logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE["BNB-NF4"]


@pytest.mark.parametrize("name", ["BNB-NF4", "BNB-INT8"])
def test_bnb_experts_dequantize_to_originals_and_kept_modules_are_exact(name, outputs, reference):
    out = outputs(name)
    q, src = tensors(out), reference[1]
    for module, original in _experts(src):
        w = q[f"{module}.weight"]
        if name == "BNB-INT8":
            assert w.dtype == torch.int8 and q[f"{module}.weight_format"].shape == ()
            restored = bnbq.dequantize_int8(w, q[f"{module}.SCB"])
        else:
            assert w.dtype == torch.uint8 and w.shape == (original.numel() // 2, 1)
            own = {k[len(module) + 1:]: v for k, v in q.items() if k.startswith(module + ".")}
            restored = bnbq.dequantize_4bit(own)
        assert relative_error(original, restored) < EXPERT_TOLERANCE[name], module
    kept = [k for k in src if any(m in k for m in KEPT_MARKERS)]
    assert kept and all(torch.equal(bits(src[k]), bits(q[k])) for k in kept)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_4bit"] == (name == "BNB-NF4")
    assert qc["load_in_8bit"] == (name == "BNB-INT8")
    if name == "BNB-NF4":
        assert qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"]
        assert qc["bnb_4bit_compute_dtype"] == "bfloat16"
    skip = qc["llm_int8_skip_modules"]
    assert skip[:2] == ["vision_model", "multi_modal_projector"] and "language_model.lm_head" in skip
    assert {f"language_model.model.layers.{i}.feed_forward.router" for i in range(2)} <= set(skip)
    assert not any("self_attn" in s or "expert" in s for s in skip)


def test_bnb_experts_only_keeps_attention_in_bf16_and_lists_it(aligned_dir, tmp_path):
    quantize(plan_quantize(aligned_dir, method="int8", backend="bnb", experts_only=True), tmp_path / "q",
             device="cpu")
    q = tensors(tmp_path / "q")
    assert q["language_model.model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert q["language_model.model.layers.0.feed_forward.experts.0.up_proj.weight"].dtype == torch.int8
    model, info = load(tmp_path / "q")
    assert_loaded_cleanly(info)
    assert type(_module(model, "language_model.model.layers.0.self_attn.q_proj")).__name__ == "Linear"


# --------------------------------------------------------------------------------------- inspect and CLI


@pytest.mark.parametrize("name,bpw", [("W4A16", (4.1, 4.2)), ("W8A16", (8.1, 8.2)), ("BNB-NF4", (4.1, 4.3)),
                                      ("BNB-INT8", (8.0, 8.2))])
def test_inspect_counts_logical_parameters_and_bits_per_weight(name, bpw, outputs, aligned_dir):
    from llama4ctl.checkpoint.checkpoint import Checkpoint
    from llama4ctl.inspection import summarize

    src, doc = summarize(Checkpoint.open(aligned_dir)), summarize(Checkpoint.open(outputs(name)))
    assert doc["num_parameters"] == src["num_parameters"]
    assert doc["parameters_by_component"] == src["parameters_by_component"]
    q = doc["quantization"]
    assert doc["expert_layout"] == "per-expert" and q["bits"] == (4 if name in ("W4A16", "BNB-NF4") else 8)
    assert bpw[0] <= q["bits_per_weight"] <= bpw[1]
    quantizable = sum(v for k, v in src["parameters_by_component"].items()
                      if k in ("attention", "dense_mlp", "shared_expert", "routed_experts"))
    assert q["quantized_parameters"] == quantizable
    assert doc["memory"]["weights_bytes"] == src["memory"]["weights_bytes"]


def test_cli_defaults_names_and_dry_run(aligned_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llama4ctl.cli.app import app

    monkeypatch.chdir(tmp_path)
    names = {name: default_destination(aligned_dir, plan_quantize(aligned_dir, **kw).format).name
             for name, kw in FORMATS.items()}
    assert names == {name: f"{aligned_dir.name}-{name}" if name != "W4A16" else f"{aligned_dir.name}-W4A16-G128"
                     for name in FORMATS}
    r = CliRunner().invoke(app, ["quantize", str(aligned_dir), "--int4", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["destination"].endswith("-W4A16-G128") and doc["format"]["scheme"] == "W4A16"
    assert doc["format"]["group_size"] == 128 and "ct_int_unfuse" in doc["ops_by_kernel"]
    r = CliRunner().invoke(app, ["quantize", str(aligned_dir), "--int8", "--backend", "bnb", "--dry-run", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["destination"].endswith("-BNB-INT8")
    for bad in (["--int4", "--backend", "fbgemm"], ["--fp8", "--backend", "bnb"], ["--int8", "--scheme", "W4A16"]):
        r = CliRunner().invoke(app, ["quantize", str(aligned_dir), *bad, "--dry-run"])
        assert r.exit_code == 1 and not (tmp_path / f"{aligned_dir.name}-W4A16-G128").exists(), bad


# ---------------------------------------------------------------------------------------------- on the fly


def test_on_the_fly_int8_quantizes_the_experts_and_matches_the_saved_checkpoint(aligned_dir, outputs):
    from llama4ctl.onthefly import load_quantized

    model, report = load_quantized(aligned_dir, "int8", device="cpu")
    expert = _module(model, "layers.1.feed_forward.experts.2.gate_proj")
    assert type(expert).__name__ == "Linear8bitLt" and expert.weight.dtype == torch.int8
    assert _module(model, "layers.0.feed_forward.router").weight.dtype == torch.bfloat16
    assert report["quantized_parameters"] > 0.9 * (report["quantized_parameters"] + report["kept_parameters"])
    assert report["quantized_bytes_per_parameter"] <= 1.02
    saved, _ = load(outputs("BNB-INT8"))
    assert torch.equal(logits(model), logits(saved))  # same modules, same bits: same logits
    assert model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_on_the_fly_nf4_quantizes_the_experts(aligned_dir, scout_dir, reference):
    from llama4ctl.onthefly import load_quantized

    model, report = load_quantized(aligned_dir, "int4", device="cpu")
    expert = _module(model, "layers.1.feed_forward.experts.2.down_proj")
    assert type(expert).__name__ == "Linear4bit" and expert.weight.dtype == torch.uint8
    assert expert.weight.quant_state.nested and report["scheme"] == "NF4+double-quant"
    assert report["quantized_bytes_per_parameter"] <= 0.53
    assert report["weights_bytes"] < 0.4 * 2 * (report["quantized_parameters"] + report["kept_parameters"])
    ref, got = reference[0], logits(model)
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE["BNB-NF4"]
    small, _ = load_quantized(scout_dir, "int4", device="cpu")  # 48-wide experts: quantized, but no CPU forward
    assert type(_module(small, "experts.0.gate_proj")).__name__ == "Linear4bit"


# ------------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["BNB-NF4", "BNB-INT8", "W4A16"])
def test_pre_quantized_generate_on_cuda(name, outputs, reference):
    from llama4ctl.generate import load as load_on

    model = load_on(outputs(name), "cuda")
    ids = torch.tensor([[1, 17, 42, 99, 7, 300, 12, 64, 5, 250]], device="cuda")
    with torch.no_grad():
        got = model(input_ids=ids).logits.float().cpu()
    ref = reference[0]
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE[name]
    assert model.generate(ids[:, :3], max_new_tokens=8, do_sample=False).shape == (1, 11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("load_in", ["int4", "int8"])
def test_on_the_fly_generate_on_cuda(load_in, aligned_dir, reference):
    from llama4ctl.onthefly import load_quantized

    model, report = load_quantized(aligned_dir, load_in, device="cuda")
    assert report["cuda_allocated_bytes"] > 0
    assert report["quantized_bytes_per_parameter"] <= (0.53 if load_in == "int4" else 1.02)
    ids = torch.tensor([[1, 17, 42, 99, 7, 300, 12, 64, 5, 250]], device="cuda")
    with torch.no_grad():
        got = model(input_ids=ids).logits.float().cpu()
    ref = reference[0]
    assert ((got - ref).norm() / ref.norm()).item() < LOGIT_TOLERANCE["BNB-NF4" if load_in == "int4" else "BNB-INT8"]
    assert model.generate(ids[:, :3], max_new_tokens=8, do_sample=False).shape == (1, 11)


def test_run_entry_point_loads_on_the_cpu_with_a_report(aligned_dir):
    from llama4ctl.onthefly import load as load_for_run

    model = load_for_run(str(aligned_dir), None, bits=8, device_map=None, attn="eager")
    report = model.llama4ctl_load_report
    assert report["device"] == "cpu" and report["load_in"] == "int8" and report["modules_quantized"] == 38
    assert model.config.get_text_config()._attn_implementation == "eager"
    with pytest.raises(PlanError, match="tensor parallel"):
        load_for_run(str(aligned_dir), bits=4, tensor_parallel=True)
