"""/v1/studies: submit, list, read, trials, best, cancel."""

from __future__ import annotations

import json
from typing import Annotated

import yaml
from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from service import studies
from service.deps import ContextDep
from service.problems import PROBLEM, problem
from service.schemas import BestOut, StudyDefinition, StudyOut, StudyPage, StudyStatus, TrialDetail, TrialOut

router = APIRouter(prefix="/v1/studies", tags=["studies"])

ERRORS = {
    404: {"description": "Unknown study or trial", "content": {PROBLEM: {}}},
    422: {"description": "Invalid input: problem details naming the field and the rule", "content": {PROBLEM: {}}},
}
MAX_BODY = 1 << 20


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    summary="Submit a study definition (JSON or YAML)",
    description="Validates the whole definition (search space, trainable and dataset names, knobs, sampler, scheduler, "
    "budget, resources) before anything runs, stores the study as `queued` and hands it to Ray as one job.",
    responses={422: ERRORS[422], 413: {"description": "Body over 1 MiB", "content": {PROBLEM: {}}}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/StudyDefinition"}},
                "application/yaml": {"schema": {"$ref": "#/components/schemas/StudyDefinition"}},
            },
        }
    },
)
async def submit_study(request: Request, ctx: ContextDep):  # type: ignore[no-untyped-def]
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return problem(413, "Payload too large", f"the body has {len(raw)} bytes; the limit is {MAX_BODY}")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        data = yaml.safe_load(raw) if kind in ("application/yaml", "application/x-yaml", "text/yaml") else json.loads(raw or b"null")
    except (ValueError, yaml.YAMLError) as exc:
        return problem(422, "Invalid definition", f"the body is not valid {'YAML' if 'yaml' in kind else 'JSON'}: {str(exc).splitlines()[0]}", field="body")
    if not isinstance(data, dict):
        return problem(422, "Invalid definition", "the body must be a mapping (a study definition)", field="body")
    definition = StudyDefinition.model_validate(data)
    return await run_in_threadpool(studies.submit, ctx, definition)


@router.get("", response_model=StudyPage, summary="List studies, newest first")
async def list_studies(
    ctx: ContextDep,
    status_filter: Annotated[StudyStatus | None, Query(alias="status")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StudyPage:
    items, total = await run_in_threadpool(studies.list_page, ctx, status_filter, offset, limit)
    return StudyPage(items=items, total=total, offset=offset, limit=limit)


@router.get("/{study_id}", response_model=StudyOut, responses={404: ERRORS[404]}, summary="A study: status, trial counts, best so far, Ray job")
async def get_study(study_id: str, ctx: ContextDep) -> StudyOut:
    row = await run_in_threadpool(studies.get, ctx, study_id)
    return await run_in_threadpool(studies.study_out, ctx, row)


@router.get("/{study_id}/trials", response_model=list[TrialOut], responses={404: ERRORS[404]}, summary="The study's trials")
async def list_trials(study_id: str, ctx: ContextDep) -> list[TrialOut]:
    return await run_in_threadpool(studies.trials, ctx, study_id)


@router.get("/{study_id}/trials/{trial_id}", response_model=TrialDetail, responses={404: ERRORS[404]}, summary="One trial with its per-epoch history")
async def get_trial(study_id: str, trial_id: str, ctx: ContextDep) -> TrialDetail:
    return await run_in_threadpool(studies.trial, ctx, study_id, trial_id)


@router.get("/{study_id}/best", response_model=BestOut, responses={404: ERRORS[404]}, summary="Top-k configurations, best first")
async def best(study_id: str, ctx: ContextDep, k: Annotated[int, Query(ge=1, le=100)] = 5) -> BestOut:
    return await run_in_threadpool(studies.best, ctx, study_id, k)


@router.post(
    "/{study_id}/cancel", response_model=StudyOut,
    responses={404: ERRORS[404], 409: {"description": "The study already finished", "content": {PROBLEM: {}}}},
    summary="Stop the study's Ray job and its trials; what was measured stays readable",
)
async def cancel(study_id: str, ctx: ContextDep) -> StudyOut:
    return await run_in_threadpool(studies.cancel, ctx, study_id)
