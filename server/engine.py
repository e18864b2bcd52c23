"""The generation engine: one thread that owns the base model and decodes with continuous batching.

Running sequences share one batched KV cache (left-padded, with an attention mask; written in place,
``server.kv_cache``). Requests that arrive while a decode step runs are prefilled together at the step's next
layer boundary (a forward pre-hook on each decoder layer), so a newcomer's first token does not wait for the
rest of the step; they join the batch after it. A prompt longer than ``prefill_chunk`` tokens is prefilled
that many tokens at a time, one chunk between two decode steps, so the running streams keep a pace instead of
stalling for the whole prompt (1.4 s for 1,800 tokens of SmolLM2 in bfloat16 on 2 cores). Finished or
abandoned rows leave at once. An idle engine waits ``batch_window_ms`` after a first arrival for company. Each
row carries its adapter slot; the batched LoRA in ``hypernet.lora`` applies every row's own A/B, so requests
with different adapters never see each other's weights. Each row samples with its own temperature, top-p,
seed, stop strings and token limit, and streams its text as it is produced. Tokens reach the asyncio side
through ``loop.call_soon_threadsafe``. The thread decodes at a higher nice value (``nice``,
``server.threads``), so adapter generation and HTTP come first.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from hypernet.lora import LoraLayers
from server.kv_cache import join, roomy_cache
from server.metrics import Metrics
from server.sampling import sample_tokens
from server.slots import EMPTY, SlotBank
from server.threads import lower_priority

log = logging.getLogger("t2l.engine")


class QueueFull(Exception):
    """The engine's queue is at its limit."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    timeout_s: float | None = None  # past this since submission, the row ends as if at max_tokens


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    reason: str  # "stop" | "length" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class Job:
    """One request's prompt, adapter slot and sampling, and the channel its events go out on."""

    prompt: list[int]
    slot: int
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    # when the request reached the server (monotonic): the batch window counts from here, so time spent
    # before submission (making the request's adapter) is time the batch had to gather company
    arrived: float = field(default_factory=time.monotonic)

    def emit(self, event: Delta | Finished) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody is listening
            self.cancelled.set()


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still grow into a stop string (so are not sent yet)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class RowState:
    """Sampling, detokenisation and stopping for one batch row."""

    def __init__(self, job: Job, tokenizer: PreTrainedTokenizerBase, eos: set[int], metrics: Metrics):
        self.job, self.tokenizer, self.eos, self.metrics = job, tokenizer, eos, metrics
        self.last: float | None = None  # when the previous token came
        self.tokens: list[int] = []
        self.text = ""  # the decoded text of tokens[:self.read]
        self.prefix = self.read = 0  # tokens[prefix:read] were decoded last: the context for the next ones
        self.sent = 0
        self.done = False
        seed = job.sampling.seed if job.sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.job.sampling.temperature <= 0

    def push(self, token: int) -> None:
        """Take one sampled token: stream new text, or finish on EOS, a stop string or the limit."""
        now = time.monotonic()
        since = self.metrics.first_token_seconds if self.last is None else self.metrics.token_seconds
        since.observe(now - (self.last or self.job.submitted))
        self.last = now
        self.metrics.tokens.inc()
        s = self.job.sampling
        if token in self.eos and not s.ignore_eos:
            self._finish("stop", self._decode(final=True), count=token)
            return
        self.tokens.append(token)
        limit = len(self.tokens) >= s.max_tokens or (
            s.timeout_s is not None and now - self.job.submitted > s.timeout_s
        )
        checked = len(self.text)
        text = self._decode(final=limit)
        # text[:checked] held no stop string, so a new one must end in the new text
        hit = min(
            (i for stop in s.stop if (i := text.find(stop, max(0, checked - len(stop) + 1))) >= 0),
            default=-1,
        )
        if hit >= 0:
            self._finish("stop", text[:hit])
        elif limit:
            self._finish("length", text)
        else:
            upto = len(text) - _held_back(text, s.stop)
            if upto > self.sent:
                self.job.emit(Delta(text[self.sent : upto]))
                self.sent = upto

    def _decode(self, final: bool = False) -> str:
        """The row's text, decoding only the tokens since the last complete character (as vLLM and TGI
        do) rather than the whole row at every token. tokens[prefix:read] are decoded again as context,
        since a tokenizer may render a token differently at the start of a sequence (SentencePiece's
        leading space). An unfinished multi-byte character waits for its rest unless ``final``."""
        if self.read < len(self.tokens):
            before = self.tokenizer.decode(self.tokens[self.prefix : self.read], skip_special_tokens=True)
            after = self.tokenizer.decode(self.tokens[self.prefix :], skip_special_tokens=True)
            if final or (len(after) > len(before) and not after.endswith("\ufffd")):
                self.text += after[len(before) :]
                self.prefix, self.read = self.read, len(self.tokens)
        return self.text

    def _finish(self, reason: str, text: str, count: int | None = None) -> None:
        if len(text) > self.sent:
            self.job.emit(Delta(text[self.sent :]))
        generated = len(self.tokens) + (count is not None)
        self.job.emit(Finished(reason, len(self.job.prompt), generated))
        self.done = True


def sample_rows(rows: list[RowState], logits: torch.Tensor) -> list[int]:
    """Each row's next token: the greedy rows with one argmax over all of them, the sampling rows together,
    each with its own temperature, top-p and generator (so a seed gives the same text whatever else is in
    the batch; ``server.sampling``)."""
    tokens = [0] * len(rows)
    greedy = [i for i, row in enumerate(rows) if row.greedy]
    if greedy:
        chosen = logits if len(greedy) == len(rows) else logits[greedy]
        # float32 first: a bfloat16 argmax over 8 rows of SmolLM2's vocabulary took 730 µs, the exact
        # conversion and a float32 argmax 345 µs (same indices)
        for i, token in zip(greedy, chosen.float().argmax(-1).tolist(), strict=True):
            tokens[i] = token
    sampling = [i for i, row in enumerate(rows) if not row.greedy]
    if sampling:
        settings = [rows[i].job.sampling for i in sampling]
        drawn = sample_tokens(
            logits[sampling],
            [s.temperature for s in settings],
            [s.top_p for s in settings],
            [rows[i].generator for i in sampling],
        )
        for i, token in zip(sampling, drawn, strict=True):
            tokens[i] = token
    return tokens


class Batch:
    """The running rows: their shared KV cache, attention mask, next positions and pending tokens."""

    def __init__(
        self,
        rows: list[RowState],
        cache: Cache,
        mask: torch.Tensor,
        position: torch.Tensor,
        pending: torch.Tensor,
    ):
        self.rows, self.cache, self.mask, self.position, self.pending = rows, cache, mask, position, pending

    def merge(self, other: "Batch") -> None:
        """Append ``other``'s rows, left-padding the shorter cache so both line up at the right."""
        length, extra = self.mask.shape[1], other.mask.shape[1]
        width = max(length, extra)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            join(mine, theirs, width)
        self.mask = torch.cat([_pad_left(self.mask, width - length), _pad_left(other.mask, width - extra)])
        self.position = torch.cat([self.position, other.position])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows += other.rows

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows; drop cache columns that no remaining row attends to."""
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.position, self.pending = self.mask[index], self.position[index], self.pending[index]
        self.rows = [self.rows[i] for i in indices]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


@dataclass
class Chunked:
    """A long prompt being prefilled a chunk at a time, into a cache of its own."""

    row: RowState
    ids: torch.Tensor  # [1, prompt length]
    cache: Cache
    done: int = 0  # prompt tokens in the cache


def _pad_left(mask: torch.Tensor, n: int) -> torch.Tensor:
    """An attention mask [B, T] with n leading zero columns."""
    return nn.functional.pad(mask, (n, 0)) if n else mask


class Engine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        layers: LoraLayers,
        bank: SlotBank,
        scaling: float,
        max_batch: int = 8,
        batch_window_ms: float = 5.0,
        max_queue: int = 64,
        metrics: Metrics | None = None,
        new_cache: Callable[[], Cache] = roomy_cache,  # bench.decode_step compares DynamicCache
        nice: int = 0,
        prefill_chunk: int | None = None,
    ):
        self.new_cache, self.nice, self.prefill_chunk = new_cache, nice, prefill_chunk
        self.model, self.tokenizer, self.layers, self.bank = model, tokenizer, layers, bank
        self.scaling, self.max_batch, self.window_s = scaling, max_batch, batch_window_ms / 1000
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth.set_function(self.queue.qsize)
        eos = model.generation_config.eos_token_id
        self.eos = {*(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        if tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos), 0)
        self.device = next(model.parameters()).device
        self.batches = 0  # prefill groups run (tests check that concurrent arrivals share one)
        self._stopping = False
        # the rows themselves, not their ids: a dead row's id can come back as a new row with another slot
        self._gathered_for: tuple[RowState, ...] = ()
        self._gathered: tuple[tuple[dict, dict] | None, torch.Tensor | None] = (None, None)
        self._stepping: list[RowState] | None = None  # the rows of the decode step in flight
        self._joined: list[Batch] = []  # prefilled during that step, to merge after it
        self._chunked: list[Chunked] = []  # long prompts waiting for their next chunk, oldest first
        self._thread = threading.Thread(target=self._loop, name="t2l-engine", daemon=True)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        self._hooks = [
            layer.register_forward_pre_hook(self._admit_mid_step) for layer in getattr(decoder, "layers", [])
        ]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout=60)
        for hook in self._hooks:
            hook.remove()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full as err:
            raise QueueFull from err

    def _arrivals(self, running: int) -> list[Job]:
        """Jobs to admit now: when idle, block for one and wait for company until the batch window has
        passed since that job's request arrived (a request that spent longer making its adapter waits no
        more); when busy, whatever is queued, up to the free places."""
        jobs: list[Job] = []
        free = self.max_batch - running
        deadline = None
        while len(jobs) < free and not self._stopping:
            try:
                if running == 0 and not jobs:
                    job = self.queue.get()
                    if job is not None:
                        deadline = job.arrived + self.window_s
                elif deadline is not None and (remaining := deadline - time.monotonic()) > 0:
                    job = self.queue.get(timeout=remaining)
                else:
                    job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            if not job.cancelled.is_set():
                jobs.append(job)
        return jobs

    def _loop(self) -> None:
        lower_priority(self.nice)  # first: the OpenMP workers this thread starts inherit it
        batch: Batch | None = None
        while True:
            running = (len(batch.rows) if batch else 0) + len(self._chunked)
            self.metrics.running.set(running)
            if self._stopping and running == 0:
                return
            arrivals = self._arrivals(running)
            try:
                with torch.inference_mode():
                    if whole := self._set_aside_long(arrivals):
                        batch = _merged(batch, self._prefill(whole))
                    if self._chunked:
                        batch = _merged(batch, self._prefill_chunk())
                    if batch is not None:
                        batch = self._step(batch)
                    for joined in self._joined:
                        batch = _merged(batch, joined)
                    self._joined = []
            except Exception as err:  # a failed step must not kill the engine or hang its clients
                log.exception("decode step failed")
                rows = [
                    *(batch.rows if batch else []),
                    *(row for b in self._joined for row in b.rows),
                    *(work.row for work in self._chunked),
                ]
                jobs = {id(job): job for job in [*(row.job for row in rows), *arrivals]}
                for job in jobs.values():
                    job.emit(Finished("error", len(job.prompt), 0, error=f"generation failed: {err}"))
                batch, self._joined, self._chunked = None, [], []

    def _admit_mid_step(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on every decoder layer: during a decode step, prefill whoever is queued now,
        between two layers, and finish the step after. The step's own tensors wait untouched in its
        frames; only the LoRA layers' per-batch state is shared, and it is put back. The newcomer's first
        token then costs its prefill, not the rest of the step first; the running rows wait for that
        prefill either way (before the next step otherwise)."""
        step = self._stepping
        if step is None or self.queue.empty() or threading.get_ident() != self._thread.ident:
            return
        arrivals = self._set_aside_long(
            self._arrivals(len(step) + sum(len(batch.rows) for batch in self._joined) + len(self._chunked))
        )
        if not arrivals:
            return
        saved = self._gathered, self._gathered_for
        self._stepping = None  # the prefill's own layers must not admit anyone
        try:
            self._joined.append(self._prefill(arrivals))
            self.metrics.mid_step_prefills.inc()
        except Exception as err:  # the newcomers fail; the step in flight goes on
            log.exception("prefill during a decode step failed")
            for job in arrivals:
                job.emit(Finished("error", len(job.prompt), 0, error=f"generation failed: {err}"))
        finally:
            self._gathered, self._gathered_for = saved
            self._stepping = step
            self._apply(step)

    def _apply(self, rows: list[RowState]) -> None:
        """Point the LoRA layers at the slots of the rows that have an adapter (the others skip LoRA);
        gathered again only when the rows change."""
        key = tuple(rows)
        if key != self._gathered_for:
            adapted = [i for i, row in enumerate(rows) if row.job.slot != EMPTY]
            index = None if len(adapted) == len(rows) else torch.tensor(adapted, device=self.device)
            gathered = self.bank.gather([rows[i].job.slot for i in adapted]) if adapted else None
            self._gathered, self._gathered_for = (gathered, index), key
        gathered, index = self._gathered
        if gathered is None:
            self.layers.clear()
        else:
            self.layers.set(*gathered, self.scaling, index)

    def _set_aside_long(self, jobs: list[Job]) -> list[Job]:
        """Queue the prompts longer than a chunk for chunked prefill; the others, to prefill whole."""
        whole = []
        for job in jobs:
            if self.prefill_chunk is None or len(job.prompt) <= self.prefill_chunk:
                whole.append(job)
            else:
                ids = torch.tensor([job.prompt], device=self.device)
                row = RowState(job, self.tokenizer, self.eos, self.metrics)
                self._chunked.append(Chunked(row, ids, self.new_cache()))
        return whole

    def _prefill_chunk(self) -> Batch | None:
        """Prefill the next chunk of the oldest long prompt; once its last chunk is in, its first token
        and the batch it joins. A prompt whose request was abandoned is dropped; one whose chunk fails
        ends with an error, and the running rows go on."""
        work = self._chunked[0]
        if work.row.job.cancelled.is_set():
            self._chunked.pop(0)
            return None
        try:
            logits = self._forward_chunk(work)
        except Exception as err:
            log.exception("prefilling a chunk of a long prompt failed")
            self._chunked.pop(0)
            job = work.row.job
            job.emit(Finished("error", len(job.prompt), 0, error=f"generation failed: {err}"))
            return None
        if work.done < work.ids.shape[1]:
            return None
        self._chunked.pop(0)
        return self._started([work.row], logits, work.cache, work.ids.new_ones((1, work.done)))

    def _forward_chunk(self, work: Chunked) -> torch.Tensor:
        """Run the next chunk of ``work``'s prompt through the model into its cache; the last position's
        logits."""
        assert self.prefill_chunk is not None  # only prompts longer than a chunk are chunked
        start, end = work.done, min(work.done + self.prefill_chunk, work.ids.shape[1])
        self._apply([work.row])
        try:
            logits = self.model(
                input_ids=work.ids[:, start:end],
                attention_mask=work.ids.new_ones((1, end)),
                position_ids=torch.arange(start, end, device=self.device)[None],
                cache=work.cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        finally:
            self.layers.clear()
        self.metrics.prefill_chunks.inc()
        work.done = end
        return logits

    def _prefill(self, jobs: list[Job]) -> Batch:
        """Prefill newcomers together (left-padded) and sample their first tokens."""
        self.batches += 1
        longest = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), longest), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, longest - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[row, longest - len(job.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.new_cache()
        rows = [RowState(job, self.tokenizer, self.eos, self.metrics) for job in jobs]
        self._apply(rows)
        try:
            # logits_to_keep=1: the LM head over every prompt token is a fifth of a prefill, for nothing
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        finally:
            self.layers.clear()
        return self._started(rows, logits, cache, mask)

    def _started(self, rows: list[RowState], logits: torch.Tensor, cache: Cache, mask: torch.Tensor) -> Batch:
        """The batch of freshly prefilled rows, each with its first token sampled and pushed."""
        tokens = sample_rows(rows, logits)
        for row, token in zip(rows, tokens, strict=True):
            row.push(token)
        position = mask.sum(-1)  # prompts are left-padded: the next position is the prompt's length
        return Batch(rows, cache, mask, position, torch.tensor(tokens, device=self.device))

    def _step(self, batch: Batch) -> Batch | None:
        """Decode one token for every row, then drop the rows that finished: a newcomer admitted before
        the next step merges into a batch without them (one copy of the cache, not two) and waits for
        no clean-up."""
        if (batch := _unfinished(batch)) is None:  # rows cancelled since the last step
            return None
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        self._apply(batch.rows)
        self._stepping = batch.rows
        try:
            logits = self.model(
                input_ids=batch.pending[:, None],
                attention_mask=batch.mask,
                position_ids=batch.position[:, None],
                cache=batch.cache,
                use_cache=True,
            ).logits[:, -1]
        finally:
            self._stepping = None
            self.layers.clear()
        batch.position = batch.position + 1
        tokens = sample_rows(batch.rows, logits)
        for row, token in zip(batch.rows, tokens, strict=True):
            row.push(token)
        batch.pending = torch.tensor(tokens, device=self.device)
        return _unfinished(batch)


def _merged(batch: Batch | None, joined: Batch | None) -> Batch | None:
    """``batch`` with ``joined``'s rows appended (either may be None)."""
    if batch is None or joined is None:
        return joined if batch is None else batch
    batch.merge(joined)
    return batch


def _unfinished(batch: Batch) -> Batch | None:
    """The batch without its finished or cancelled rows (None when none is left)."""
    keep = [i for i, row in enumerate(batch.rows) if not row.done and not row.job.cancelled.is_set()]
    if not keep:
        return None
    if len(keep) < len(batch.rows):
        batch.keep(keep)
    return batch
