"""RayJobs in the API process, where the dispatcher's thread and requests' threads share it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# in a fresh interpreter (this one may have imported Ray already): eight threads make RayJobs import
# Ray's Jobs and State clients at once, against an address where nothing listens; then one more call
FIRST_USE_FROM_THREADS = textwrap.dedent("""
    import threading
    from service.jobs import RayJobs
    from service.settings import Settings

    jobs = RayJobs(Settings(ray_address="http://127.0.0.1:9"))
    errors = []

    def use(i):
        try:
            jobs.largest_node() if i % 2 else jobs.ping()
        except Exception as exc:  # no cluster there: a connection error is expected, nothing else
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=use, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    use(1)
    broken = [e for e in errors if "partially initialized" in e or e.startswith("ImportError")]
    print("\\n".join(broken) or "ok")
""")


def test_threads_first_using_ray_jobs_at_once_leave_ray_importable() -> None:
    # Ray's modules import each other in circles: without RayJobs's import lock two threads see each
    # other's half-made modules and `ray` stays broken in the API process (studies never dispatched)
    out = subprocess.run([sys.executable, "-c", FIRST_USE_FROM_THREADS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ok", out.stdout[-2000:]
