"""Server settings resolved for the machine: ``T2L_BASE_DTYPE=auto``."""

import pytest
import torch

from server.settings import ServerSettings


@pytest.mark.parametrize(
    ("native", "device", "expected"),
    [
        (True, "cpu", torch.bfloat16),  # a CPU with bf16 instructions
        (False, "cpu", torch.float32),  # one that would emulate them
        (True, "cuda", torch.float32),  # a GPU: not measured, so the exact default
    ],
)
def test_auto_base_dtype_is_bfloat16_only_on_a_cpu_that_computes_it(monkeypatch, native, device, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("T2L_BASE_DTYPE", raising=False)
    settings = ServerSettings(device=device)
    assert settings.base_dtype == "auto"
    assert settings.torch_base_dtype() == expected


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_an_explicit_base_dtype_is_taken_as_given(monkeypatch, name):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert ServerSettings(base_dtype=name, device="cpu").torch_base_dtype() == getattr(torch, name)


def test_an_unknown_base_dtype_is_refused_with_its_name():
    with pytest.raises(ValueError, match="base_dtype"):
        ServerSettings(base_dtype="int8")
