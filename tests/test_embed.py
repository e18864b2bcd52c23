"""The description embedder (the real all-MiniLM-L6-v2, from its PyPI package)."""

import pytest
import torch

from hypernet.embed import Embedder, normalize_description
from hypernet.errors import T2LError
from hypernet.settings import DEFAULT_EMBEDDER


def test_normalisation():
    assert normalize_description("  solve   math\nproblems ") == "solve math problems."
    assert normalize_description("Is this spam?") == "Is this spam?"
    for empty in ("", "   \n\t"):
        with pytest.raises(T2LError, match="empty"):
            normalize_description(empty)


def test_vectors_are_scaled_unit_vectors_and_similar_tasks_are_close(embedder):
    out = embedder.embed(
        [
            "Solve grade-school math word problems.",
            "Answer arithmetic word problems.",
            "Translate German to English.",
        ]
    )
    assert out.vectors.shape == (3, 384) and out.truncated == [False] * 3
    torch.testing.assert_close(out.vectors.norm(dim=-1), torch.full((3,), 384**0.5))
    cos = torch.nn.functional.cosine_similarity
    assert cos(out.vectors[0], out.vectors[1], dim=0) > cos(out.vectors[0], out.vectors[2], dim=0)


def test_too_long_descriptions_are_truncated_and_flagged(embedder):
    out = embedder.embed(["describe " * 300])
    assert out.truncated == [True]


def test_cache_gives_identical_vectors_for_equivalent_spellings(embedder):
    first = embedder.embed(["Detect   toxic comments"]).vectors
    assert torch.equal(first, embedder.embed(["Detect toxic comments."]).vectors)


def test_pooling_choice_changes_the_embedding(embedder):
    cls = Embedder(DEFAULT_EMBEDDER, pooling="cls")
    text = ["Write Python functions from docstrings."]
    assert cls.dim == embedder.dim
    assert not torch.allclose(cls.embed(text).vectors, embedder.embed(text).vectors)


def test_unknown_embedder_is_a_one_line_error():
    with pytest.raises(T2LError, match="no-such-org/no-such-embedder"):
        Embedder("no-such-org/no-such-embedder")


def test_onnx_runtime_gives_pytorchs_vectors_and_exports_once(embedder, tmp_path):
    texts = ["Solve grade-school math word problems.", "describe " * 300, "Translate German to English."]
    onnx = Embedder(DEFAULT_EMBEDDER, runtime="onnx", cache_dir=tmp_path)
    assert onnx.runtime == "onnx"
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    exported = graph.stat().st_mtime_ns
    ours, reference = onnx.embed(texts), embedder.embed(texts)
    torch.testing.assert_close(ours.vectors, reference.vectors, atol=1e-5, rtol=0)
    assert ours.truncated == reference.truncated == [False, True, False]
    alone = ["Label each tweet as ironic or not."]  # one text, no padding: the graph's other shape
    torch.testing.assert_close(onnx.embed(alone).vectors, embedder.embed(alone).vectors, atol=1e-5, rtol=0)
    again = Embedder(DEFAULT_EMBEDDER, pooling="cls", runtime="onnx", cache_dir=tmp_path)
    assert graph.stat().st_mtime_ns == exported and len(list((tmp_path / "onnx").iterdir())) == 1
    cls = Embedder(DEFAULT_EMBEDDER, pooling="cls")  # pooling stays PyTorch's: every mode as before
    torch.testing.assert_close(again.embed(texts).vectors, cls.embed(texts).vectors, atol=1e-5, rtol=0)


def test_an_embedder_onnx_cannot_run_embeds_on_pytorch(monkeypatch, tmp_path, caplog):
    def untraceable(*args, **kwargs):
        raise RuntimeError("cannot trace this architecture")

    monkeypatch.setattr("hypernet.embed.OnnxTransformer", untraceable)
    fallback = Embedder(DEFAULT_EMBEDDER, runtime="onnx", cache_dir=tmp_path)
    assert fallback.runtime == "torch" and "cannot trace" in caplog.text
    assert Embedder(DEFAULT_EMBEDDER, runtime="onnx").runtime == "torch"  # no cache folder: no export
