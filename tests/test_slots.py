"""The slot bank: in-place activation, pinning, LRU eviction, waiting when every slot is pinned."""

import asyncio
import threading

import pytest
import torch

from server.slots import EMPTY, SlotBank
from tests.conftest import settled_thread_count, thread_count
from tests.test_lora import random_adapter


@pytest.fixture
def bank(tiny_spec) -> SlotBank:
    return SlotBank(tiny_spec, rank=4, slots=2)


def test_activation_copies_in_place_and_gather_gives_each_rows_adapter(bank, tiny_spec):
    a, b = random_adapter(tiny_spec, 1), random_adapter(tiny_spec, 2)
    storage = {m: t.data_ptr() for m, t in bank.A.items()}

    async def run() -> tuple[int, int, int]:
        return await bank.acquire("a", a), await bank.acquire("b", b), await bank.acquire("a", a)

    slot_a, slot_b, again = asyncio.run(run())
    assert slot_a != slot_b and again == slot_a and bank.pins[slot_a] == 2
    assert {m: t.data_ptr() for m, t in bank.A.items()} == storage  # no new tensors
    A, B = bank.gather([slot_b, EMPTY, slot_a])
    for m in A:
        assert torch.equal(A[m][0], b.A[m]) and torch.equal(B[m][2], a.B[m])
        assert torch.count_nonzero(B[m][1]) == 0  # the empty slot leaves the base model alone
        assert B[m].transpose(-1, -2).is_contiguous()  # Bᵀ, what the engine's product takes, is stored
    assert len(bank.activations_ms) == 2


def test_gather_of_consecutive_slots_is_a_view_equal_to_a_copy(bank, tiny_spec):
    async def run() -> list[int]:
        return [await bank.acquire(name, random_adapter(tiny_spec, i)) for i, name in enumerate("ab")]

    first, second = sorted(asyncio.run(run()))
    assert second == first + 1
    for slots in ([first], [first, second]):
        A, B = bank.gather(slots)
        copies = bank.gather([*slots, EMPTY])  # not consecutive: copied by index
        for m in A:
            assert A[m].data_ptr() == bank.A[m][first].data_ptr()  # a view: nothing copied
            assert B[m].transpose(-1, -2).data_ptr() == bank.Bt[m][first].data_ptr()
            assert torch.equal(A[m], copies[0][m][: len(slots)]) and torch.equal(
                B[m], copies[1][m][: len(slots)]
            )
            assert B[m].transpose(-1, -2).is_contiguous()
    A, _ = bank.gather([second, first])  # out of order: a copy in the rows' order
    for m in A:
        assert A[m].data_ptr() != bank.A[m][second].data_ptr() and torch.equal(A[m][0], bank.A[m][second])


def test_least_recently_used_unpinned_slot_is_reused_and_pinned_ones_are_kept(bank, tiny_spec):
    async def run() -> None:
        slot_a = await bank.acquire("a", random_adapter(tiny_spec, 1))
        slot_b = await bank.acquire("b", random_adapter(tiny_spec, 2))
        await bank.release(slot_a)
        slot_c = await bank.acquire("c", random_adapter(tiny_spec, 3))
        assert slot_c == slot_a and bank.slot_of("a") is None and bank.slot_of("b") == slot_b

    asyncio.run(run())


def test_a_request_waits_while_every_slot_is_pinned(bank, tiny_spec):
    async def run() -> None:
        held = [await bank.acquire(name, random_adapter(tiny_spec, i)) for i, name in enumerate("ab")]
        waiter = asyncio.create_task(bank.acquire("c", random_adapter(tiny_spec, 9)))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # never evicts a slot in use
        await bank.release(held[1])
        assert await asyncio.wait_for(waiter, 1) == held[1]
        assert bank.slot_of("a") == held[0]

    asyncio.run(run())


def test_evict_forgets_only_unpinned_slots(bank, tiny_spec):
    async def run() -> None:
        slot = await bank.acquire("a", random_adapter(tiny_spec, 1))
        bank.evict("a")
        assert bank.slot_of("a") == slot  # still in use
        await bank.release(slot)
        bank.evict("a")
        assert bank.slot_of("a") is None

    asyncio.run(run())


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.bfloat16])
def test_slot_copy_converts_exactly_as_torch_does(src_dtype, dst_dtype):
    """The piecewise copy rounds exactly like ``Tensor.to``, from a strided view too."""
    from server.slots import _copy

    torch.manual_seed(0)
    values = torch.cat([torch.randn(4096) * 10.0 ** torch.randint(-6, 4, (4096,)), torch.tensor([0.0, -0.0])])
    # ties: float32 values exactly halfway between two bfloat16 values, both parities
    halfway = (torch.arange(0x3F80, 0x3F90, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)
    src = torch.cat([values, halfway, -halfway]).to(src_dtype)
    dst = torch.empty(len(src), dtype=dst_dtype)
    _copy(dst, src[None].expand(3, -1)[1])  # a strided view, as slot slices are
    assert torch.equal(dst, src.to(dst_dtype))


def test_slot_copies_start_no_openmp_pool_on_the_calling_thread():
    """Slots are filled on the event loop's thread: a parallel torch op there would leave an OpenMP pool
    beside the engine's (``server.threads``). A plain 2 MB ``copy_`` starts one; ours runs serially."""
    from server.slots import _copy, _zero

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP pool to start")
    dst, src = torch.empty(30, 8, 2304), torch.randn(30, 8, 2304).half()

    def threads_started(fill) -> int:
        """Threads started by ``fill`` on a new thread, counted before that thread ends."""
        count = settled_thread_count()
        grew = []

        def work() -> None:
            fill()
            grew.append(thread_count() - count - 1)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        return grew[0]

    assert threads_started(lambda: (_copy(dst, src), _zero(dst[:, 4:]))) == 0
    assert threads_started(lambda: dst.copy_(src)) >= 1  # the check sees a pool when one starts
    _copy(dst, src)
    assert torch.equal(dst, src.float())


def test_bfloat16_bank_holds_the_adapter_rounded(tiny_spec):
    bank = SlotBank(tiny_spec, rank=4, slots=1, dtype=torch.bfloat16)
    adapter = random_adapter(tiny_spec, 3)
    slot = asyncio.run(bank.acquire("a", adapter))
    A, B = bank.gather([slot])
    for m in A:
        assert torch.equal(A[m][0], adapter.A[m].to(torch.bfloat16))
        assert torch.equal(B[m][0], adapter.B[m].to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_narrow_adapter_in_a_wide_slot_leaves_the_extra_ranks_zero(tiny_spec, dtype):
    """A slot that held a rank-4 adapter, reused by a rank-2 one: ranks 2-3 are zeroed (exact)."""
    bank = SlotBank(tiny_spec, rank=4, slots=1, dtype=dtype)
    narrow = random_adapter(tiny_spec, 5, rank=2)

    async def run() -> int:
        slot = await bank.acquire("wide", random_adapter(tiny_spec, 4, rank=4))
        await bank.release(slot)
        return await bank.acquire("narrow", narrow)

    A, B = bank.gather([asyncio.run(run())])
    for m in A:
        assert torch.equal(A[m][0, :, :2], narrow.A[m].to(dtype))
        assert torch.equal(B[m][0, ..., :2], narrow.B[m].to(dtype))
        assert torch.count_nonzero(A[m][0, :, 2:]) == 0 and torch.count_nonzero(B[m][0, ..., 2:]) == 0
