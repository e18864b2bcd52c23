"""The generation engine: one thread that owns the base model and decodes batches of requests.

Requests that arrive within ``batch_window_ms`` of each other (up to ``max_batch``) are prefilled and
decoded together. Each batch row carries its adapter slot; the batched LoRA in ``hypernet.lora``
applies every row's own A/B, so requests with different adapters never see each other's weights.
Each row samples with its own temperature, top-p, seed, stop strings and token limit, and streams its
text as it is produced. Tokens reach the asyncio side through ``loop.call_soon_threadsafe``.
"""

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from hypernet.lora import LoraLayers
from server.slots import SlotBank

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

    def __init__(self, job: Job, tokenizer: PreTrainedTokenizerBase, eos: set[int]):
        self.job, self.tokenizer, self.eos = job, tokenizer, eos
        self.tokens: list[int] = []
        self.sent = 0
        self.done = False
        seed = job.sampling.seed if job.sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        s = self.job.sampling
        if s.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / s.temperature, dim=-1)
        if s.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < s.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))

    def push(self, token: int) -> None:
        """Take one sampled token: stream new text, or finish on EOS, a stop string or the limit."""
        s = self.job.sampling
        if token in self.eos:
            self._finish("stop", self._text(), count=token)
            return
        self.tokens.append(token)
        text = self._text()
        hit = min((i for i in (text.find(stop) for stop in s.stop) if i >= 0), default=-1)
        if hit >= 0:
            self._finish("stop", text[:hit])
        elif len(self.tokens) >= s.max_tokens:
            self._finish("length", text)
        elif not text.endswith("\ufffd"):  # an unfinished multi-byte character waits for its rest
            upto = len(text) - _held_back(text, s.stop)
            if upto > self.sent:
                self.job.emit(Delta(text[self.sent : upto]))
                self.sent = upto

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _finish(self, reason: str, text: str, count: int | None = None) -> None:
        if len(text) > self.sent:
            self.job.emit(Delta(text[self.sent :]))
        generated = len(self.tokens) + (count is not None)
        self.job.emit(Finished(reason, len(self.job.prompt), generated))
        self.done = True


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
    ):
        self.model, self.tokenizer, self.layers, self.bank, self.scaling = (
            model,
            tokenizer,
            layers,
            bank,
            scaling,
        )
        self.max_batch, self.window_s = max_batch, batch_window_ms / 1000
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        eos = model.generation_config.eos_token_id
        self.eos = {*(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        if tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos), 0)
        self.device = next(model.parameters()).device
        self.batches = 0  # how many batches ran (tests check that concurrent requests share one)
        self._thread = threading.Thread(target=self._loop, name="t2l-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full as err:
            raise QueueFull from err

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The first job plus whatever arrives within the batch window; and whether to stop after."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, stopping = self._collect(first)
            try:
                self._run(batch)
            except Exception as err:  # a failed batch must not kill the engine or hang its clients
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    job.emit(Finished("error", len(job.prompt), 0, error=f"generation failed: {err}"))
            if stopping:
                return

    @torch.inference_mode()
    def _run(self, batch: list[Job]) -> None:
        batch = [job for job in batch if not job.cancelled.is_set()]
        if not batch:
            return
        self.batches += 1
        longest = max(len(job.prompt) for job in batch)
        ids = torch.full((len(batch), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, job in enumerate(batch):  # left padding: every row's last token is at the end
            ids[row, longest - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[row, longest - len(job.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [RowState(job, self.tokenizer, self.eos) for job in batch]
        A, B = self.bank.gather([job.slot for job in batch])
        cache = DynamicCache()
        with self.layers.applied(A, B, self.scaling):
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
            position = positions[:, -1:]
            while True:
                step = []
                for row, state in enumerate(rows):
                    if state.done or state.job.cancelled.is_set():
                        state.done = True
                        step.append(self.pad)
                        continue
                    token = state.sample(logits[row])
                    state.push(token)
                    step.append(token)
                if all(state.done for state in rows):
                    return
                position = position + 1
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                logits = self.model(
                    input_ids=torch.tensor(step, device=self.device)[:, None],
                    attention_mask=mask,
                    position_ids=position,
                    cache=cache,
                    use_cache=True,
                ).logits[:, -1]
