"""Benchmark: activating a generated adapter on the resident SmolLM2-135M (r=8, q/v).

Ours: copy the adapter's tensors into a free or least-recently-used slot of the slot bank, in place,
as the server does: adapters in the dtype the store keeps them in (``T2L_ADAPTER_DTYPE``, float16 by
default), slots in the base's (``T2L_BASE_DTYPE``, float32), so the copy converts.
Baselines, measured in the same run on the same adapters: PEFT's ``hotswap_adapter_from_state_dict``
(in-place swap of an already loaded adapter) and PEFT's ``load_adapter`` (a new adapter module set,
then ``delete_adapter``). Target (issue 3): activation ≤ 1 ms on our 2-core CPU.

    python -m bench.activation [--n 100] [--json OUT]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils.hotswap import hotswap_adapter_from_state_dict

from bench.stats import summary, write_json
from hypernet.base import load_base
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from hypernet.lora import products_dtype
from server.settings import ServerSettings
from server.slots import SlotBank

TARGET_MS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = ServerSettings()
    generator = AdapterGenerator.load(settings.checkpoint or default_checkpoint(settings.checkpoints_dir))
    torch.manual_seed(0)
    with torch.no_grad():  # untrained heads emit B = 0; give them weights so adapters differ like real ones
        for head in generator.model.heads.values():
            head.weight.normal_(std=0.002)
    made, _ = generator.generate([f"Task number {i}: answer questions of kind {i}." for i in range(8)])
    adapters = [adapter.to(getattr(torch, settings.adapter_dtype)) for adapter in made]
    spec, dtype = generator.config.base, settings.torch_base_dtype()
    slot_dtype = products_dtype(dtype, "cpu")  # as the server's
    bank = SlotBank(spec, generator.config.hypernet.rank, slots=4, dtype=slot_dtype)
    base, _ = load_base(settings.base_model, settings.checkpoints_dir, dtype)

    with tempfile.TemporaryDirectory() as tmp:
        folders = [adapter.save_peft(Path(tmp) / str(i)) for i, adapter in enumerate(adapters)]
        peft = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="default")
        config = peft.peft_config["default"]
        # hotswap wants the loaded model's own key names, which carry the adapter name
        states = [
            {k.replace(".weight", ".default.weight"): v for k, v in adapter.peft_state_dict().items()}
            for adapter in adapters
        ]
        ours, hotswap, load = [], [], []
        for i in range(args.n):
            adapter = adapters[i % len(adapters)]
            slot = asyncio.run(bank.acquire(f"a{i}", adapter))  # a new id each time: always a real copy
            ours.append(bank.activations_ms[-1])
            asyncio.run(bank.release(slot))
            start = time.perf_counter()
            hotswap_adapter_from_state_dict(peft, states[i % len(states)], "default", config)
            hotswap.append((time.perf_counter() - start) * 1000)
            if i < max(10, args.n // 5):  # load_adapter is slow: fewer samples
                start = time.perf_counter()
                peft.load_adapter(str(folders[i % len(folders)]), adapter_name="extra")
                load.append((time.perf_counter() - start) * 1000)
                peft.delete_adapter("extra")

    result = {
        "adapter_dtype": settings.adapter_dtype,
        "slot_dtype": str(slot_dtype).removeprefix("torch."),
        "slot_copy": summary(ours),
        "peft_hotswap": summary(hotswap),
        "peft_load_adapter": summary(load),
    }
    base_p50 = result["peft_hotswap"]["p50"]
    print(f"adapters in {settings.adapter_dtype}, slots in {result['slot_dtype']}")
    print(f"{'activation':<30}{'p50 ms':>9}{'p95 ms':>9}{'x PEFT hotswap':>16}")
    labels = {
        "slot_copy": "ours: copy into slot",
        "peft_hotswap": "PEFT hotswap_adapter_from_sd",
        "peft_load_adapter": "PEFT load_adapter",
    }
    for key, label in labels.items():
        r = result[key]
        print(f"{label:<30}{r['p50']:>9.3f}{r['p95']:>9.3f}{r['p50'] / base_p50:>16.3f}")
    met = result["slot_copy"]["p50"] <= TARGET_MS
    print(f"target: activation p50 <= {TARGET_MS} ms: {'met' if met else 'MISSED'}")
    result["target_ms"], result["meets_target"] = TARGET_MS, met
    write_json(args.json, result)


if __name__ == "__main__":
    main()
