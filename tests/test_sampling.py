"""Batched temperature and top-p sampling: the right distribution, the nucleus only, one seed one text."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.sampling import NUCLEUS_K, sample_tokens

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])


def reference_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution a row samples from, by the textbook recipe: sort, keep the tokens whose preceding
    mass is below top_p, renormalise."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(-1) - ordered < top_p
    restricted = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return restricted / restricted.sum()


def frequencies(logits: torch.Tensor, temperature: float, top_p: float, draws: int) -> torch.Tensor:
    """How often each token comes out of ``draws`` rows sampled in one batch, each with its own seed."""
    rows = logits.expand(draws, -1)
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    tokens = sample_tokens(rows, [temperature] * draws, [top_p] * draws, generators)
    return torch.bincount(torch.tensor(tokens), minlength=logits.numel()).double() / draws


def test_tokens_come_with_the_temperatures_distribution():
    for temperature in (0.5, 1.0, 1.7):
        expected = reference_nucleus(LOGITS, temperature, 1.0)
        seen = frequencies(LOGITS, temperature, 1.0, 20_000)
        assert (seen - expected).abs().max() < 0.015, (temperature, seen, expected)


def test_top_p_keeps_the_nucleus_and_its_proportions():
    for top_p in (0.5, 0.8, 0.95):
        expected = reference_nucleus(LOGITS, 0.9, top_p)
        seen = frequencies(LOGITS, 0.9, top_p, 20_000)
        assert (seen[expected == 0] == 0).all(), (top_p, seen, expected)
        assert (seen - expected).abs().max() < 0.015, (top_p, seen, expected)


def test_a_nucleus_wider_than_every_candidate_set_is_found_in_the_sorted_vocabulary():
    """A flat distribution over more tokens than the largest candidate set: top-p 0.9 keeps about 90% of
    them, every draw inside that nucleus, spread over it."""
    vocab = 3 * NUCLEUS_K[-1]
    logits = torch.linspace(0.0, 0.1, vocab)  # nearly flat, ascending: the nucleus is the upper part
    expected = reference_nucleus(logits, 1.0, 0.9)
    tokens = torch.tensor(
        sample_tokens(
            logits.expand(4000, -1),
            [1.0] * 4000,
            [0.9] * 4000,
            [torch.Generator().manual_seed(s) for s in range(4000)],
        )
    )
    assert (expected[tokens] > 0).all()
    assert tokens.min() < vocab * 0.2 and tokens.max() > vocab * 0.9  # not stuck in the candidates


def test_a_seeded_row_gets_the_same_tokens_whatever_else_is_in_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 2
    settings_ = ([1.0, 0.7, 1.3, 0.9, 1.1], [1.0, 0.9, 0.5, 1.0, 0.8])

    def tokens(rows: list[int], steps: int = 20) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(100 + row) for row in rows]
        out = [[] for _ in rows]
        for _ in range(steps):
            drawn = sample_tokens(
                logits[rows], [settings_[0][r] for r in rows], [settings_[1][r] for r in rows], generators
            )
            for seen, token in zip(out, drawn, strict=True):
                seen.append(token)
        return out

    together = tokens([0, 1, 2, 3, 4])
    for row in range(5):
        assert tokens([row]) == [together[row]]
    assert tokens([4, 2]) == [together[4], together[2]]


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8), min_size=2, max_size=80),
    temperature=st.floats(0.05, 2.0),
    top_p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_drawn_token_is_in_the_nucleus(logits, temperature, top_p, seed):
    """In the nucleus, or tied with its least probable token (ties may be ordered either way)."""
    row = torch.tensor(logits)
    token = sample_tokens(row[None], [temperature], [top_p], [torch.Generator().manual_seed(seed)])[0]
    nucleus = reference_nucleus(row, temperature, top_p) > 0
    probs = torch.softmax(row.float() / temperature, dim=-1)
    assert nucleus[token] or probs[token] >= probs[nucleus].min()
