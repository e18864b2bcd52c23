"""/v1/models: the base model and the stored adapters, each adapter with ``parent`` = the base."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from server.api.deps import service
from server.api.protocol import ModelList, ModelObject
from server.service import Service

router = APIRouter(prefix="/v1", tags=["models"])
STARTED = int(time.time())
LISTED = 1000


@router.get("/models", response_model=ModelList)
async def list_models(svc: Annotated[Service, Depends(service)]) -> ModelList:
    base = ModelObject(
        id=svc.base_name,
        created=STARTED,
        root=svc.base_name,
        parent=None,
        checkpoint=svc.checkpoint.id,
        checkpoint_status=svc.checkpoint.status,
        checkpoint_trained=svc.checkpoint.trained,
    )
    ids, _ = await svc.store.list_ids(LISTED)
    adapters = []
    for adapter_id in ids:
        found = await svc.store.get(adapter_id)
        if found is not None:
            adapters.append(
                ModelObject(
                    id=adapter_id,
                    created=found[0].created,
                    root=svc.base_name,
                    parent=svc.base_name,
                    checkpoint=svc.checkpoint.id,
                    checkpoint_status=svc.checkpoint.status,
                    checkpoint_trained=svc.checkpoint.trained,
                )
            )
    return ModelList(data=[base, *adapters])
