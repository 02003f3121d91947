"""The FP8 quantization_config llama4ctl writes equals compressed-tensors' own serialization of its presets."""

import pytest

from llama4ctl.formats.compressed_tensors import CompressedTensorsFp8Format
from llama4ctl.formats.selection import Selection


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "FP8_BLOCK"])
def test_config_equals_the_library_classes(scheme):
    from compressed_tensors import __version__
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    fmt = CompressedTensorsFp8Format(scheme, Selection([r"re:.*layers\.0\..*"]))
    fmt._kept = ["language_model.lm_head", r"re:vision_model\..*"]
    ours = fmt.quantization_config()
    lib = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(scheme, ["Linear"])},
                             format="float-quantized", quantization_status=QuantizationStatus.COMPRESSED,
                             ignore=fmt.ignore_list()).model_dump(mode="json")
    lib["config_groups"]["group_0"]["format"] = "float-quantized"
    assert ours == {**lib, "version": __version__, "transform_config": {}}
    # and the library reads it back
    assert QuantizationConfig.model_validate({k: v for k, v in ours.items() if k not in ("version", "transform_config")})
