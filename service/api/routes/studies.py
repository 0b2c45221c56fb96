"""/v1/studies: submit, list, read, trials, best, cancel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel

from service.api import events, studies
from service.api.bodies import BodyError, StrictJSONRoute, parse_body
from service.api.deps import ContextDep, OwnerDep
from service.api.longpoll import MAX_WAIT_S
from service.api.plots import PlotsOut
from service.api.problems import ERRORS, PROBLEM_CONTENT, problem
from service.api.schemas import (
    BestOut,
    ExtendRequest,
    ForkRequest,
    ImportanceOut,
    Intervention,
    ParetoOut,
    RefineOut,
    RefineRequest,
    StudyOut,
    StudyPage,
    StudySummaryPage,
    TrialDetail,
    TrialOut,
    json_bytes,
)
from service.definition import StudyStatus, TrialState
from service.store import TrialSort

router = APIRouter(prefix="/v1/studies", tags=["studies"], route_class=StrictJSONRoute, responses={401: ERRORS[401], 422: ERRORS[422], 503: ERRORS[503]})
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,255}$"  # printable ASCII, no spaces: a UUID, a commit SHA, ...


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    summary="Submit a study definition (JSON or YAML)",
    description="Validates the whole definition (search space, trainable and dataset names, knobs, sampler, scheduler, "
    "budget, resources) before anything runs, stores the study as `queued` and hands it to Ray as one job.",
    responses={
        200: {"description": "A replay: the Idempotency-Key was used before with the same body; this is that study", "model": StudyOut},
        409: {"description": "A request with the same Idempotency-Key is still in flight", "content": PROBLEM_CONTENT},
        413: ERRORS[413], 422: ERRORS[422], 429: ERRORS[429],
    },
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
async def submit_study(  # type: ignore[no-untyped-def]
    request: Request, response: Response, ctx: ContextDep, owner: OwnerDep,
    idempotency_key: Annotated[str | None, Header(
        pattern=IDEMPOTENCY_KEY,
        description="Makes retries safe: the same key with the same body returns the study the first request created "
        "(200, header Idempotent-Replayed: true) instead of a second one; the same key with another body is 422; "
        "while the first request is in flight, 409. Keys are per owner. CI can pass the commit SHA.",
    )] = None,
):
    raw = await request.body()  # the size limit (413) is enforced while reading, by service.api.limits
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:  # off the event loop: a large YAML body must not stall other requests
        data = await run_in_threadpool(parse_body, raw, kind)
    except BodyError as exc:
        return problem(exc.status, "Invalid definition" if exc.status == 422 else "Payload too large", exc.detail, field="body")
    study, created = await run_in_threadpool(studies.submit, ctx, data, owner, idempotency_key)
    ctx.dispatch_now.set()  # hand it to Ray now, not at the dispatcher's next tick
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return study


async def json_response(build: Callable[[], BaseModel]) -> Response:
    """The model ``build`` returns, built in the thread pool (it reads the store) and serialized once
    (service.api.schemas.json_bytes): the route's ``response_model`` documents it, FastAPI does not
    validate and serialize it a second time."""
    return Response(await run_in_threadpool(lambda: json_bytes(build())), media_type="application/json")


@router.get("", response_model=StudyPage | StudySummaryPage, summary="List studies, newest first")
async def list_studies(
    ctx: ContextDep,
    owner: OwnerDep,
    status_filter: Annotated[StudyStatus | None, Query(alias="status")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    parent_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{16}$", description="Only the studies warm-started or refined from this one.")] = None,
    view: Annotated[Literal["full", "summary"], Query(
        description="full: each study as GET /v1/studies/{id} shows it; summary: without its definition "
                    "(what a listing shows; a page is about a quarter of the bytes, for about the same server time).")] = "full",
) -> Response:
    body = await run_in_threadpool(studies.list_page_json, ctx, status_filter, offset, limit, owner, parent_id, summary=view == "summary")
    return Response(body, media_type="application/json")


CACHED = ("Served from memory for up to CAVIAR_READ_CACHE_S (default 0.5 s): the study's driver's writes show within "
          "that, a cancel through this API at once. Polling clients may poll as often as they like.")


@router.get("/{study_id}", response_model=StudyOut, responses={404: ERRORS[404]}, summary="A study: status, trial counts, best so far, Ray job",
            description=CACHED)
async def get_study(
    study_id: str, ctx: ContextDep, owner: OwnerDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description=(
        "A long poll: while the study has not finished, hold the answer up to this many seconds and answer as soon as it "
        "completes, fails or is cancelled (read fresh then, not from the cache). 0 (the default): answer at once."))] = 0.0,
) -> Response:
    return Response(await studies.view_json(ctx, study_id, owner, wait_s), media_type="application/json")


@router.get("/{study_id}/trials", response_model=list[TrialOut], responses={404: ERRORS[404]}, summary="The study's trials",
            description="All of them, oldest first (" + CACHED + "), or with `limit` one page sorted by the database, "
            "with the total that matches in the `X-Total-Count` header.")
async def list_trials(
    study_id: str, ctx: ContextDep, owner: OwnerDep,
    state: Annotated[TrialState | None, Query(description="Only trials in this state (with `limit`).")] = None,
    sort: Annotated[TrialSort, Query(description="The sort key (with `limit`).")] = "trial",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int | None, Query(ge=1, le=500, description="A page of at most this many; without it, every trial.")] = None,
) -> Response:
    if limit is None and state is None and offset == 0:
        return Response(await studies.trials_json(ctx, study_id, owner), media_type="application/json")
    body, total = await run_in_threadpool(studies.trials_page, ctx, study_id, owner, state=state.value if state else None, sort=sort,
                                          descending=order == "desc", offset=offset, limit=limit or 500)
    return Response(body, media_type="application/json", headers={"X-Total-Count": str(total)})


@router.get("/{study_id}/plots", response_model=PlotsOut, responses={404: ERRORS[404]},
            summary="The study page's plots, aggregated: optimization history, learning curves with the scheduler's rungs, "
            "parallel coordinates", description="Bounded whatever the study's size (service/api/plots.py says how it samples). " + CACHED)
async def study_plots(study_id: str, ctx: ContextDep, owner: OwnerDep) -> Response:
    return Response(await studies.plots_json(ctx, study_id, owner), media_type="application/json")


@router.get("/{study_id}/trials/{trial_id}", response_model=TrialDetail, responses={404: ERRORS[404]}, summary="One trial with its per-epoch history")
async def get_trial(study_id: str, trial_id: str, ctx: ContextDep, owner: OwnerDep) -> Response:
    return await json_response(lambda: studies.trial(ctx, study_id, trial_id, owner))


@router.post(
    "/{study_id}/trials/{trial_id}/adjust", status_code=status.HTTP_202_ACCEPTED, response_model=Intervention,
    responses={404: ERRORS[404], 409: {"description": "The trial is not running", "content": PROBLEM_CONTENT}},
    summary="Panda mode: change a running trial's knobs (lr, weight_decay, dropout: what its trainable declares adjustable)",
    description="Accepted now, applied by the trainable at its next epoch boundary (then `after_epoch` is set in the trial's "
    "`interventions`); it holds from the next epoch on and is in that epoch's checkpoint, so it survives a resume.",
)
async def adjust_trial(study_id: str, trial_id: str, changes: dict[str, Any], ctx: ContextDep, owner: OwnerDep) -> Intervention:
    return await run_in_threadpool(studies.adjust, ctx, study_id, trial_id, changes, owner)


@router.post(
    "/{study_id}/trials/{trial_id}/fork", status_code=status.HTTP_201_CREATED, response_model=StudyOut,
    responses={404: ERRORS[404], 409: {"description": "No checkpoint at that epoch", "content": PROBLEM_CONTENT}, 429: ERRORS[429]},
    summary="Panda mode's 'try something else from here': a new study whose one trial starts from this trial's checkpoint "
    "at from_epoch, with the changes",
)
async def fork_trial(study_id: str, trial_id: str, body: ForkRequest, ctx: ContextDep, owner: OwnerDep) -> StudyOut:
    study = await run_in_threadpool(studies.fork, ctx, study_id, trial_id, body.from_epoch, body.changes, owner)
    ctx.dispatch_now.set()
    return study


@router.get(
    "/{study_id}/trials/{trial_id}/checkpoint", response_class=StreamingResponse, responses={
        200: {"description": "The checkpoint files and caviar.json (trainable, whole config, last metrics) as a gzipped tar",
              "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
        404: ERRORS[404]},
    summary="Download the trial's newest checkpoint (.tar.gz), from wherever the study storage is",
    description="Load it for inference with `trainables.load_model(DIR)` after extracting, or `caviar best ID --download DIR`.",
)
async def get_checkpoint(study_id: str, trial_id: str, ctx: ContextDep, owner: OwnerDep) -> StreamingResponse:
    archive, name = await run_in_threadpool(studies.checkpoint, ctx, study_id, trial_id, owner)
    return StreamingResponse(iterate_in_threadpool(_chunks(archive)), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _chunks(archive: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    with archive:
        while chunk := archive.read(size):
            yield chunk


@router.get(
    "/{study_id}/events", response_class=StreamingResponse,
    responses={200: {"description": "text/event-stream: snapshot, trial_started, epoch, stopped_early, completed, failed, retried, "
                     "new_best, study_finished; ids are log positions for Last-Event-ID",
                     "content": {"text/event-stream": {"schema": {  # one event, as OpenAPI 3.2 describes SSE
                         "type": "object", "required": ["data"],
                         "properties": {"data": {"type": "string", "description": "JSON"}, "event": {"type": "string"},
                                        "id": {"type": "string", "pattern": r"^\d+\.\d+$"}, "retry": {"type": "integer", "minimum": 0}}}}}},
               404: ERRORS[404]},
    summary="The study's events as they happen (Server-Sent Events), resumable with Last-Event-ID",
    description="See service/api/events.py. A client that connects without Last-Event-ID gets a `snapshot` first; "
    "the stream ends with `study_finished`.",
)
async def study_events(
    study_id: str, request: Request, ctx: ContextDep, owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", description="The id of the last event received: resume after it.")] = None,
) -> StreamingResponse:
    await run_in_threadpool(studies.get, ctx, study_id, owner)  # 404 before the stream starts
    return EventSourceResponse(events.stream(ctx, request, study_id, owner, events.parse_mark(last_event_id)),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get(
    "/{study_id}/importance", response_model=ImportanceOut,
    responses={404: ERRORS[404], 409: {"description": "Fewer than 2 completed or stopped-early trials", "content": PROBLEM_CONTENT}},
    summary="Which hyperparameters matter (Optuna's fANOVA over the completed and stopped-early trials)",
)
async def importance(study_id: str, ctx: ContextDep, owner: OwnerDep) -> ImportanceOut:
    return await run_in_threadpool(studies.importance, ctx, study_id, owner)


@router.get("/{study_id}/pareto", response_model=ParetoOut, responses={404: ERRORS[404]},
            summary="The Pareto front: the completed trials no other completed trial beats in every objective",
            description="With several `objectives` the trade-off a study found (e.g. accuracy against parameters); with one, "
            "its best trials. Values are each trial's at its last epoch.")
async def pareto(study_id: str, ctx: ContextDep, owner: OwnerDep) -> ParetoOut:
    return await run_in_threadpool(studies.pareto, ctx, study_id, owner)


@router.get("/{study_id}/best", response_model=BestOut, responses={404: ERRORS[404]}, summary="Top-k configurations, best first")
async def best(study_id: str, ctx: ContextDep, owner: OwnerDep, k: Annotated[int, Query(ge=1, le=100)] = 5) -> Response:
    return await json_response(lambda: studies.best(ctx, study_id, k, owner))


@router.post(
    "/{study_id}/refine", status_code=status.HTTP_201_CREATED, response_model=StudyOut,
    responses={200: {"description": "With ?dry_run=true: the new study's definition and what narrowing changed; nothing stored",
                     "model": RefineOut},
               404: ERRORS[404], 409: {"description": "The study has no measured trial to refine around", "content": PROBLEM_CONTENT},
               429: ERRORS[429]},
    summary="Coarse to fine: a new study in this one's space narrowed around its top-k, warm-started with them",
    description="Numeric ranges shrink to the top-k's span plus `margin` (in log space for log parameters), within the old "
    "bounds; categoricals keep the values the top-k used. The new study's `parent_id` is this study. Other keys of the "
    "body override the definition (validated as a submission is).",
)
async def refine(study_id: str, body: RefineRequest, ctx: ContextDep, owner: OwnerDep,
                 dry_run: Annotated[bool, Query(description="Answer the new definition without storing or running it.")] = False,
                 ) -> Any:
    plan = await run_in_threadpool(studies.refine_definition, ctx, study_id, body, owner)
    if dry_run:
        return Response(plan.model_dump_json(), media_type="application/json")
    study, _ = await run_in_threadpool(studies.submit, ctx, plan.definition, owner, None)
    ctx.dispatch_now.set()
    return study


@router.post(
    "/{study_id}/extend", response_model=StudyOut,
    responses={404: ERRORS[404], 409: {"description": "The study is still queued or running", "content": PROBLEM_CONTENT}, 429: ERRORS[429]},
    summary="Run N more trials in a finished study: same id, same Optuna study (the sampler keeps its history), status back to queued",
)
async def extend(study_id: str, body: ExtendRequest, ctx: ContextDep, owner: OwnerDep) -> StudyOut:
    try:
        out = await run_in_threadpool(studies.extend, ctx, study_id, body.num_trials, owner)
    finally:
        ctx.reads.invalidate(study_id)
    ctx.dispatch_now.set()
    return out


@router.post(
    "/{study_id}/cancel", response_model=StudyOut,
    responses={404: ERRORS[404], 409: {"description": "The study already finished", "content": PROBLEM_CONTENT}},
    summary="Stop the study's Ray job and its trials; what was measured stays readable",
)
async def cancel(study_id: str, ctx: ContextDep, owner: OwnerDep) -> StudyOut:
    try:
        return await run_in_threadpool(studies.cancel, ctx, study_id, owner)
    finally:
        ctx.reads.invalidate(study_id)  # the next read shows the cancel
