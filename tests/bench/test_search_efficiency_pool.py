"""bench.search_efficiency --pool: seeds of two results files summarized together, without copying their runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import search_efficiency


def results(path: Path, seeds: range, methods: dict[str, float]) -> Path:
    """A results file as the benchmark writes it: per method and seed, a curve reaching ``methods[m]`` at 60 trial-epochs."""
    runs = {m: [{"seed": s, "wall_s": 10.0, "t0": 0.0, "test_accuracy": top, "final_best": top,
                 "curve": [[20, 0.5], [60, top + 0.001 * s]], "curve_wall": [[2.0, 0.5], [6.0, top + 0.001 * s]]} for s in seeds]
            for m, top in methods.items()}
    args = {"trainable": "mlp_bn_softmax", "configs": "4", "epochs": "30", "seeds": str(len(seeds)), "methods": ",".join(methods),
            "target": "0.7", "tag": "", "json": "None", "out": str(path.parent), "smoke": "False", "summarize": "None"}
    path.write_text(json.dumps({"args": args, "cores": 2, "summary": {}, "runs": runs}))
    return path


def test_pool_pairs_each_seed_within_its_file_and_names_the_files_instead_of_copying_runs(tmp_path: Path) -> None:
    a = results(tmp_path / "a.json", range(0, 3), {"caviar": 0.68, "tune+": 0.72})
    b = results(tmp_path / "b.json", range(3, 5), {"caviar": 0.71, "caviar@nogroup": 0.8, "tune+": 0.68})
    out = tmp_path / "pooled.json"
    assert search_efficiency.pool([a, b], out) == 0
    data = json.loads(out.read_text())
    assert data["pooled_from"] == ["a.json", "b.json"] and "runs" not in data
    assert set(data["summary"]["methods"]) == {"caviar", "tune+"}  # only what every file ran
    paired = data["summary"]["paired"]["caviar vs tune+"]
    # tune+ reaches 0.7 in seeds 0-2 and caviar in 3-4: each 60 trial-epochs, the other never
    assert paired["seeds"] == 5 and (paired["a_fewer"], paired["b_fewer"]) == (2, 3)
    assert out.with_suffix(".png").exists()


def test_pool_refuses_files_that_share_a_seed(tmp_path: Path) -> None:
    a = results(tmp_path / "a.json", range(0, 2), {"caviar": 0.7, "tune+": 0.7})
    b = results(tmp_path / "b.json", range(1, 3), {"caviar": 0.7, "tune+": 0.7})
    with pytest.raises(SystemExit, match="no seed in common"):
        search_efficiency.pool([a, b], tmp_path / "pooled.json")
