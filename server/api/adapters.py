"""/v1/adapters: create (or reuse), read, list, delete and download generated adapters."""

import io
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from hypernet.adapter import LoraAdapter
from server.api.deps import adapter_spec, service
from server.api.protocol import AdapterCreate, AdapterList, AdapterObject, AdapterTimings, Deleted
from server.errors import APIError
from server.service import Service
from server.store import Record, Tier
from server.threads import on_own_thread

router = APIRouter(prefix="/v1", tags=["adapters"])
Svc = Annotated[Service, Depends(service)]


def adapter_object(svc: Service, record: Record, cached: Tier, timings: dict | None = None) -> AdapterObject:
    adapter = record.adapter
    return AdapterObject(
        id=record.id,
        description=adapter.description,
        created=record.created,
        base_model=svc.base_name,
        checkpoint=svc.checkpoint.id,
        checkpoint_status=svc.checkpoint.status,
        checkpoint_trained=svc.checkpoint.trained,
        rank=adapter.rank,
        target_modules=adapter.target_modules,
        description_truncated=adapter.metadata.get("description_truncated") == "true",
        cached=cached or False,
        timings_ms=AdapterTimings(**timings) if timings else None,
    )


async def find(svc: Service, adapter_id: str) -> tuple[Record, Tier]:
    found = await svc.store.get(adapter_id)
    if found is None:
        raise APIError(404, f"no adapter {adapter_id!r}", "id", "adapter_not_found")
    return found


@router.post("/adapters", response_model=AdapterObject)
async def create_adapter(body: AdapterCreate, svc: Svc) -> AdapterObject:
    if body.description is None and body.blend is None:
        raise APIError(422, "description: field required (or give a blend)", "description", "missing")
    if body.description is not None and body.blend is not None:
        raise APIError(422, "give a description or a blend, not both", "blend", "conflict")
    param = "description" if body.blend is None else "blend"
    spec = adapter_spec(svc, body.description, body.blend, body.mode, param)
    lookup = await svc.store.get_or_create(spec)
    return adapter_object(svc, lookup.record, lookup.cached, lookup.timings_ms)


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(
    svc: Svc, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> AdapterList:
    ids, more = await svc.store.list_ids(limit, after)
    data = []
    for adapter_id in ids:
        found = await svc.store.get(adapter_id)
        if found is not None:  # expired (TTL) entries drop out of the listing
            data.append(adapter_object(svc, *found))
    return AdapterList(data=data, has_more=more, last_id=ids[-1] if ids else None)


@router.get("/adapters/{adapter_id}", response_model=AdapterObject)
async def get_adapter(adapter_id: str, svc: Svc) -> AdapterObject:
    return adapter_object(svc, *await find(svc, adapter_id))


@router.delete("/adapters/{adapter_id}", response_model=Deleted)
async def delete_adapter(adapter_id: str, svc: Svc) -> Deleted:
    if not await svc.store.delete(adapter_id):
        raise APIError(404, f"no adapter {adapter_id!r}", "id", "adapter_not_found")
    await svc.backend.forget(adapter_id)
    return Deleted(id=adapter_id, deleted=True)


def _archive(folder: Path, name: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"{name}/{path.name}")
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in files:
                archive.add(path, f"{name}/{path.name}")
    return buffer.getvalue()


def _peft_archive(adapter: LoraAdapter, dtype: torch.dtype, adapter_id: str, format: str) -> bytes:
    """The adapter's PEFT folder, cast to ``dtype``, as one archive (on a thread that ends: the cast is
    a parallel torch op, ``server.threads``)."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter.save_peft(Path(tmp), dtype)
        return _archive(Path(tmp), adapter_id, format)


@router.get("/adapters/{adapter_id}/download")
async def download_adapter(
    adapter_id: str,
    svc: Svc,
    format: Literal["zip", "tar.gz"] = "zip",
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
) -> Response:
    record, _ = await find(svc, adapter_id)
    data = await on_own_thread(_peft_archive, record.adapter, getattr(torch, dtype), adapter_id, format)
    media = "application/zip" if format == "zip" else "application/gzip"
    disposition = f'attachment; filename="{adapter_id}.{format}"'
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})
