"""/v1/schedules: a study definition run again every so often, warm-started from the previous run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from service.api import schedules
from service.api.bodies import BodyError, StrictJSONRoute, parse_body
from service.api.deps import ContextDep, OwnerDep
from service.api.problems import ERRORS, problem
from service.api.schemas import ScheduleIn, ScheduleOut

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], route_class=StrictJSONRoute, responses={401: ERRORS[401], 422: ERRORS[422], 503: ERRORS[503]})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut,
             summary="Re-tune on a schedule: run a study every period, each run warm-started from the previous run's best "
             "(which it re-evaluates: the drift)", responses={413: ERRORS[413]},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/ScheduleIn"}},
                 "application/yaml": {"schema": {"$ref": "#/components/schemas/ScheduleIn"}}}}})
async def create_schedule(request: Request, ctx: ContextDep, owner: OwnerDep) -> Any:
    raw = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:  # JSON or YAML, as a study definition is
        data = await run_in_threadpool(parse_body, raw, kind)
    except BodyError as exc:
        return problem(exc.status, "Invalid schedule" if exc.status == 422 else "Payload too large", exc.detail, field="body")
    body = ScheduleIn.model_validate(data)
    out = await run_in_threadpool(schedules.create, ctx, body, owner)
    ctx.dispatch_now.set()  # a first run due now starts at once (at the next tick when another API process dispatches)
    return out


@router.get("", summary="The owner's schedules, with their runs and drift")
async def list_schedules(ctx: ContextDep, owner: OwnerDep) -> list[ScheduleOut]:
    return await run_in_threadpool(lambda: schedules.out_many(ctx, ctx.store.schedules.for_owner(owner)))


@router.get("/{schedule_id}", responses={404: ERRORS[404]}, summary="A schedule, its runs and each run's drift")
async def get_schedule(schedule_id: str, ctx: ContextDep, owner: OwnerDep) -> ScheduleOut:
    row = await run_in_threadpool(schedules.get, ctx, schedule_id, owner)
    return await run_in_threadpool(schedules.out, ctx, row)


@router.post("/{schedule_id}/pause", responses={404: ERRORS[404]}, summary="Pause: no run starts until it is resumed")
async def pause(schedule_id: str, ctx: ContextDep, owner: OwnerDep) -> ScheduleOut:
    return await run_in_threadpool(schedules.set_paused, ctx, schedule_id, owner, True)


@router.post("/{schedule_id}/resume", responses={404: ERRORS[404]}, summary="Resume (a run overdue meanwhile starts now)")
async def resume(schedule_id: str, ctx: ContextDep, owner: OwnerDep) -> ScheduleOut:
    out = await run_in_threadpool(schedules.set_paused, ctx, schedule_id, owner, False)
    ctx.dispatch_now.set()
    return out


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: ERRORS[404]},
               summary="Delete the schedule (the studies it started stay)")
async def delete_schedule(schedule_id: str, ctx: ContextDep, owner: OwnerDep) -> Response:
    await run_in_threadpool(schedules.delete, ctx, schedule_id, owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
