"""What can be chosen by name: trainables and search-space presets."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from search_spaces import list_presets, load_preset, preset_description
from service.api.deps import current_owner
from service.api.problems import ERRORS
from service.api.schemas import SearchSpaceOut, TrainableOut
from trainables import list_trainables

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(current_owner)], responses={401: ERRORS[401]})


@router.get("/trainables", summary="Registered trainables: their knobs with defaults, and the metrics they report (what an objective may name)")
def trainables() -> list[TrainableOut]:
    return [TrainableOut(name=s.name, description=s.description.strip(), metrics=list(s.metrics), knobs=s.knobs(),
                        adjustable=list(s.adjustable))
            for s in list_trainables().values()]


@router.get("/search-spaces", summary="Search-space presets with their parameters")
def search_spaces() -> list[SearchSpaceOut]:
    return [SearchSpaceOut(name=n, description=preset_description(n), parameters=load_preset(n).to_dict()) for n in list_presets()]
