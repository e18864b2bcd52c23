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
