"""The store: the only code that speaks SQL. One repository per aggregate, over one database.

    store = Store(url)                       # after migrate(url)
    store.studies.create(...); store.trials.add_epoch(...); store.tokens.create(owner); store.keys.claim(...)

Every call is one short transaction, retried on transient lock errors (``engine.retry_transient``).
"""

from service.store.adjustments import AdjustmentRepo
from service.store.engine import SQLITE_BUSY_TIMEOUT_S, Database, migrate, sqlalchemy_url
from service.store.events import Event, EventRepo
from service.store.keys import ClaimOutcome, KeyRepo
from service.store.leases import DISPATCHER, LeaseRepo
from service.store.models import LOCAL_OWNER, ScheduleRow, ScheduleRunRow, StudyRow, TokenRow, TrialRow, now
from service.store.schedules import ScheduleRepo
from service.store.stats import Stats, StatsRepo
from service.store.studies import StudyOutcome, StudyRepo
from service.store.tokens import TokenRepo, hash_token
from service.store.trials import TrialRepo, TrialSort


class Store:
    """The repositories over one database. Thread-safe."""

    def __init__(self, url: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        self.db = Database(url, busy_timeout_s)
        self.url = url
        self.studies = StudyRepo(self.db)
        self.trials = TrialRepo(self.db)
        self.tokens = TokenRepo(self.db)
        self.keys = KeyRepo(self.db)
        self.stats = StatsRepo(self.db)
        self.events = EventRepo(self.db)
        self.schedules = ScheduleRepo(self.db)
        self.adjustments = AdjustmentRepo(self.db)
        self.leases = LeaseRepo(self.db)

    def ping(self) -> None:
        self.db.ping()


__all__ = [
    "DISPATCHER",
    "LOCAL_OWNER",
    "AdjustmentRepo",
    "ClaimOutcome",
    "Database",
    "Event",
    "EventRepo",
    "KeyRepo",
    "LeaseRepo",
    "ScheduleRepo",
    "ScheduleRow",
    "ScheduleRunRow",
    "Stats",
    "StatsRepo",
    "Store",
    "StudyOutcome",
    "StudyRepo",
    "StudyRow",
    "TokenRepo",
    "TokenRow",
    "TrialRepo",
    "TrialRow",
    "TrialSort",
    "hash_token",
    "migrate",
    "now",
    "sqlalchemy_url",
]
