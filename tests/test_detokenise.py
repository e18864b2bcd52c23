"""The engine's incremental detokenising streams exactly the text a whole-row decode gives, stops at the
same place, and never sends half a character, on SmolLM2's real byte-level tokenizer."""

import asyncio

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from server.engine import Delta, Finished, Job, RowState, Sampling
from server.metrics import Metrics

SAMPLES = [
    "Plain ASCII words, then numbers 12345 and punctuation!?",
    "Übergrößenträger: naïve café — 東京タワー, 😀🎉 emoji, עברית, русский текст.",
    "  leading spaces\n\nnew lines\tand tabs  ",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_base):
    return AutoTokenizer.from_pretrained(tiny_chat_base)


@pytest.fixture(scope="module")
def pieces(tokenizer) -> list[int]:
    """Token ids seen in real text, including the byte tokens of multi-byte characters."""
    return sorted({t for text in SAMPLES for t in tokenizer.encode(text)})


class Recorder(Job):
    def __init__(self, sampling: Sampling):
        super().__init__(prompt=[1, 2, 3], slot=0, sampling=sampling, loop=asyncio.new_event_loop())
        self.out: list[Delta | Finished] = []

    def emit(self, event: Delta | Finished) -> None:
        self.out.append(event)


def stream(tokenizer, tokens: list[int], eos: int | None = None, **sampling) -> tuple[str, Finished, list]:
    job = Recorder(Sampling(max_tokens=sampling.pop("max_tokens", len(tokens)), **sampling))
    row = RowState(job, tokenizer, {2} if eos is None else {eos}, Metrics())
    for token in tokens:
        row.push(token)
        if row.done:
            break
    deltas = [e.text for e in job.out if isinstance(e, Delta)]
    finished = [e for e in job.out if isinstance(e, Finished)]
    assert len(finished) == 1 and job.out[-1] is finished[0]
    return "".join(deltas), finished[0], deltas


@pytest.mark.parametrize("text", SAMPLES)
def test_streamed_text_is_the_whole_decode(tokenizer, text):
    tokens = tokenizer.encode(text)
    out, finished, deltas = stream(tokenizer, tokens)
    assert out == tokenizer.decode(tokens, skip_special_tokens=True) == text
    assert finished.reason == "length" and finished.completion_tokens == len(tokens)
    assert not any("\ufffd" in d for d in deltas)  # a split character is sent whole, once complete


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_token_streams_match_the_whole_decode(tokenizer, pieces, data):
    tokens = data.draw(st.lists(st.sampled_from(pieces), min_size=1, max_size=40))
    out, _, _ = stream(tokenizer, tokens)
    assert out == tokenizer.decode(tokens, skip_special_tokens=True)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_stop_strings_cut_where_the_whole_text_first_has_one(tokenizer, pieces, data):
    tokens = data.draw(st.lists(st.sampled_from(pieces), min_size=2, max_size=40))
    whole = tokenizer.decode(tokens, skip_special_tokens=True)
    start = data.draw(st.integers(0, len(whole) - 1))
    stop = whole[start : start + data.draw(st.integers(1, 4))]
    assume("\ufffd" not in stop)  # the mark of a character cut at the limit is not text a user stops on
    out, finished, _ = stream(tokenizer, tokens, stop=[stop])
    assert finished.reason == "stop" and out == whole[: whole.find(stop)]


def test_eos_ends_the_row_with_the_text_so_far(tokenizer):
    tokens = tokenizer.encode("東京")
    out, finished, _ = stream(tokenizer, [*tokens, 2, *tokenizer.encode(" more")], max_tokens=50)
    assert out == "東京" and finished.reason == "stop" and finished.completion_tokens == len(tokens) + 1


def test_a_limit_inside_a_character_sends_what_there_is(tokenizer):
    tokens = tokenizer.encode("😀")
    assert len(tokens) > 1  # byte tokens: the limit falls inside the character
    out, finished, _ = stream(tokenizer, tokens, max_tokens=1)
    assert finished.reason == "length" and out == tokenizer.decode(tokens[:1])
