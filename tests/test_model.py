"""The hypernetwork: shapes, LoRA-like initialisation, one batched pass, gradients."""

import pytest
import torch
from pydantic import ValidationError

from hypernet.model import SIZES, HyperConfig, HyperLoRA


def config(**overrides) -> HyperConfig:
    fields = dict(
        embed_dim=16,
        num_layers=3,
        target_modules=["q_proj", "v_proj"],
        in_features={"q_proj": 64, "v_proj": 64},
        out_features={"q_proj": 64, "v_proj": 32},
        rank=4,
    )
    return HyperConfig.sized("S", **(fields | overrides))


def test_shapes_of_every_layer_and_module():
    model = HyperLoRA(config()).eval()
    A, B = model(torch.randn(5, 16))
    assert A["q_proj"].shape == (5, 3, 4, 64) and B["q_proj"].shape == (5, 3, 64, 4)
    assert A["v_proj"].shape == (5, 3, 4, 64) and B["v_proj"].shape == (5, 3, 32, 4)


def test_untrained_network_emits_zero_B_and_lora_style_A():
    model = HyperLoRA(config()).eval()
    A, B = model(torch.randn(2, 16))
    for m in ("q_proj", "v_proj"):
        assert torch.count_nonzero(B[m]) == 0
        assert 0 < A[m].abs().max() <= 1 / 64**0.5  # Kaiming-uniform bound of LoRA's A
        assert not torch.equal(A[m][:, 0], A[m][:, 1])  # each layer its own A


def test_batched_pass_equals_one_description_at_a_time():
    torch.manual_seed(0)
    model = HyperLoRA(config()).eval()
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight, std=0.1)
    emb = torch.randn(4, 16)
    A, B = model(emb)
    for i in range(4):
        a, b = model(emb[i : i + 1])
        for m in A:
            torch.testing.assert_close(A[m][i], a[m][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(B[m][i], b[m][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_bias", [False, True])
def test_heads_compute_only_the_units_each_matrix_uses(head_bias):
    """A head is as wide as its module's larger side, rank rows of it; a matrix uses the first ``fan``
    units of each row. Computing only those gives what the full head gives, cut (what checkpoints
    were trained with)."""
    torch.manual_seed(0)
    model = HyperLoRA(config(head_bias=head_bias)).eval()
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight, std=0.1)
        if head_bias:
            torch.nn.init.normal_(head.bias, std=0.1)
    emb = torch.randn(2, 16)
    A, B = model(emb)
    h = model.head_inputs(emb)
    for i, m in enumerate(model.config.target_modules):
        full = model.heads[m](h[:, :, i]).view(2, 3, 2, 4, -1)  # every unit, then cut
        fan_in, fan_out = model.config.in_features[m], model.config.out_features[m]
        torch.testing.assert_close(A[m], full[:, :, 0, :, :fan_in] + getattr(model, f"shift_A_{m}"))
        b = full[:, :, 1, :, :fan_out].transpose(-1, -2) + getattr(model, f"shift_B_{m}")
        torch.testing.assert_close(B[m], b)


def test_descriptions_and_layers_get_different_adapters_once_trained():
    torch.manual_seed(0)
    model = HyperLoRA(config()).eval()
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight, std=0.1)
    _, B = model(torch.randn(2, 16))
    assert not torch.allclose(B["q_proj"][0], B["q_proj"][1])
    assert not torch.allclose(B["q_proj"][0, 0], B["q_proj"][0, 1])


def test_gradients_reach_the_heads_from_a_zero_B_start():
    model = HyperLoRA(config())
    A, B = model(torch.randn(2, 16))
    x = torch.randn(2, 7, 64)
    delta = (x @ A["q_proj"][:, 0].transpose(-1, -2)) @ B["q_proj"][:, 0].transpose(-1, -2)
    (delta.square().sum() + delta.sum()).backward()
    assert model.heads["q_proj"].weight.grad.abs().sum() > 0
    assert model.heads["v_proj"].weight.grad is None or model.heads["v_proj"].weight.grad.abs().sum() == 0


def test_sizes_and_scaling():
    assert {
        s: HyperConfig.sized(
            s, **config().model_dump(exclude={"size", "latent_size", "head_in_size"})
        ).latent_size
        for s in SIZES
    } == {s: SIZES[s][0] for s in SIZES}
    assert config(rank=8, alpha=16, use_rslora=True).scaling == pytest.approx(16 / 8**0.5)
    assert config(rank=8, alpha=16, use_rslora=False).scaling == pytest.approx(2.0)


def test_config_validation_names_the_problem():
    with pytest.raises(ValidationError, match="k_proj"):
        config(target_modules=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="size must be one of"):
        HyperConfig.sized("XL", **config().model_dump(exclude={"size", "latent_size", "head_in_size"}))
