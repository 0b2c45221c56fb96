"""The web UI's study page at 1,000 and 10,000 trials: load time and payload, in a real browser.

What runs: `caviar serve` in a subprocess (uvicorn over HTTP, no Ray) on a fresh SQLite store
holding one synthetic study per size (service.store.synthetic: 30 epochs, ASHA rungs at 1/3/9/27,
4 trials still running), and Debian's Chromium driven by Playwright. For each size, R times: a
fresh browser context (nothing cached) opens the study page and we time

  plots      - navigation until the history, curves, parallel coordinates and the trials table are drawn;
  importance - until the importance bars are drawn too (fANOVA: the first load computes it, later
               loads find it cached for the same trials).

and sum the bytes of every response the page fetched (the event stream aside: it stays open), as
the page reads them and as they crossed the wire (the API gzips JSON over 1 KB).
The first load of each size is reported apart (cold server: importance computed, read cache empty).

Invariants (exit code 1; --smoke too): the page's payload stays under 1 MB at every size, at most 200
curves and 500 parallel-coordinate lines are drawn, the table shows 50 rows of the full count, and
no request leaves the page's origin.

    python -m bench.ui_load                      # 1,000 and 10,000 trials, 5 loads each (JSON: docs/bench/ui_load.json)
    python -m bench.ui_load --smoke              # 2,000 trials, 2 loads
    python -m bench.ui_load --screenshots docs/ui   # also keep a screenshot of each page
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Checks, json_path, parser, table, write_json
from service.local import LocalServer
from service.store import Store, migrate
from service.store.synthetic import synthetic_study

CHROMIUM = os.environ.get("CAVIAR_CHROMIUM", "/usr/bin/chromium")
DEFINITION = {"name": "ui-load", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key",
              "fixed": {"epochs": 30}, "scheduler": {"type": "asha", "max_t": 30, "grace_period": 1, "reduction_factor": 3},
              "budget": {"num_trials": 10_000, "max_concurrent_trials": 8}}


def load(browser: Any, url: str, sid: str) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sizes: dict[str, int] = {}
    wire: dict[str, int] = {}
    foreign: list[str] = []

    def seen(response: Any) -> None:
        if not response.url.startswith(url):
            foreign.append(response.url)
        elif "/events" not in response.url:
            path = response.url.removeprefix(url).split("?")[0]
            sizes[path] = len(response.body())
            wire[path] = int(response.headers.get("content-length") or sizes[path])  # gzipped when it was

    page.on("response", seen)
    start = time.perf_counter()
    page.goto(f"{url}/#/studies/{sid}")
    page.wait_for_selector("svg[data-curves]", timeout=120_000)
    page.wait_for_selector("[data-plot=parallel] svg[data-lines]", timeout=120_000)
    page.wait_for_selector("[data-plot=history] svg[data-points]", timeout=120_000)
    page.wait_for_selector("table.trials-table tbody tr", timeout=120_000)
    plots_s = time.perf_counter() - start
    page.wait_for_selector("[data-plot=importance] svg", timeout=300_000)
    importance_s = time.perf_counter() - start
    out = {"plots_s": plots_s, "importance_s": importance_s, "bytes": sum(sizes.values()), "wire_bytes": sum(wire.values()), "by_path": sizes, "foreign": foreign,
           "curves": int(page.get_attribute("[data-plot=curves] svg", "data-curves") or 0),
           "lines": int(page.get_attribute("[data-plot=parallel] svg", "data-lines") or 0),
           "rows": page.locator("table.trials-table tbody tr").count(),
           "total_text": page.locator("[data-testid=trials-total]").inner_text()}
    context.close()
    return out


def main() -> int:
    ap = parser(__doc__, "2,000 trials, 2 loads", "ui_load")
    ap.add_argument("--sizes", default=None, help="comma-separated trial counts (default 1000,10000; smoke 2000)")
    ap.add_argument("--loads", type=int, default=None, help="page loads per size (default 5; smoke 2)")
    ap.add_argument("--screenshots", type=Path, default=None, metavar="DIR", help="save a screenshot of each page here")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("2000" if args.smoke else "1000,10000")).split(",")]
    loads = args.loads or (2 if args.smoke else 5)
    if not Path(CHROMIUM).exists():  # as the UI tests: a skip on a laptop, a failure in CI
        in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        print(f"ui_load {'FAILED' if in_ci else 'skipped'}: it needs Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1 if in_ci or not args.smoke else 0
    from playwright.sync_api import sync_playwright

    checks = Checks("ui_load")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="caviar-ui-load-") as tmp:
        data = Path(tmp)
        (data / "datasets").mkdir()
        db = f"sqlite:///{data / 'caviar.db'}"
        migrate(db)
        store = Store(db)
        ids = {}
        for n in sizes:
            t = time.perf_counter()
            ids[n] = synthetic_study(store, {**DEFINITION, "name": f"ui-load-{n}"}, n, running=4, status="running", seed=n)
            print(f"stored a {n}-trial study in {time.perf_counter() - t:.1f} s", flush=True)
        store.db.engine.dispose()
        server = LocalServer(data, None).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
                for n in sizes:
                    runs = [load(browser, server.url, ids[n]) for _ in range(loads)]
                    first, rest = runs[0], runs[1:] or runs
                    row = {"trials": n, "first_plots_s": first["plots_s"], "first_importance_s": first["importance_s"],
                           "median_plots_s": statistics.median(r["plots_s"] for r in rest),
                           "median_importance_s": statistics.median(r["importance_s"] for r in rest),
                           "bytes": max(r["bytes"] for r in runs), "wire_bytes": max(r["wire_bytes"] for r in runs),
                           "by_path": first["by_path"]}
                    results.append(row)
                    checks.check(all(r["bytes"] < 1_000_000 for r in runs), f"{n} trials: the study page fetched {row['bytes']:,} bytes (< 1 MB)")
                    checks.check(all(r["curves"] <= 200 and r["lines"] <= 500 for r in runs),
                                 f"{n} trials: {first['curves']} curves and {first['lines']} lines drawn (<= 200, <= 500)")
                    checks.check(all(r["rows"] == 50 and r["total_text"] == f"1–50 of {n + 4}" for r in runs),
                                 f"{n} trials: the table shows 50 rows of {n + 4}")
                    checks.check(not any(r["foreign"] for r in runs), f"{n} trials: no request left the page's origin")
                if args.screenshots:
                    shoot(browser, server.url, ids[sizes[-1]], args.screenshots)
                browser.close()
        finally:
            server.stop()
    print()
    print(table(["trials", "first: plots s", "first: +importance s", f"median of {max(loads - 1, 1)}: plots s", "importance s", "payload KB", "gzipped KB"],
                [[r["trials"], f"{r['first_plots_s']:.2f}", f"{r['first_importance_s']:.2f}", f"{r['median_plots_s']:.2f}",
                  f"{r['median_importance_s']:.2f}", f"{r['bytes'] / 1024:.0f}", f"{r['wire_bytes'] / 1024:.0f}"] for r in results]))
    print("\nbytes by path (first load of the largest):")
    for path, size in sorted(results[-1]["by_path"].items(), key=lambda kv: -kv[1]):
        print(f"  {size:>9,}  {path}")
    write_json(json_path(args, "ui_load"), {"loads": loads, "results": results, "checks": checks.as_dict()})
    return checks.exit_code()


def shoot(browser: Any, url: str, sid: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/")
    page.wait_for_selector("table.studies tbody tr[data-study]")
    page.screenshot(path=str(directory / "studies.png"))
    page.goto(f"{url}/#/studies/{sid}")
    page.wait_for_selector("[data-plot=importance] svg", timeout=300_000)
    page.locator("section.card.best").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('.grid').scrollIntoView()")
    page.screenshot(path=str(directory / "study-plots.png"))
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(directory / "study.png"))
    page.goto(f"{url}/#/submit")
    page.wait_for_selector("[data-testid=presets] li")
    page.fill("#definition", "name: digits\ntrainable: mlp_bn_softmax\ndataset: {name: digits}\nsearch_space:\n  lr: {type: float, low: 1.0, high: 0.001, log: true}\n")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector(".errors li")
    page.screenshot(path=str(directory / "submit.png"))
    page.close()
    print(f"screenshots in {directory}")


if __name__ == "__main__":
    sys.exit(main())
