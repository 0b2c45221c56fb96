"""Run a trainable standalone: one JSON line per epoch, then one with the test metrics.

    python -m trainables mlp_bn_softmax --dataset mnist1d --epochs 30 --config '{"lr": 0.01}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import cast

from pydantic import ValidationError

from trainables.config import TrainConfig
from trainables.registry import UnknownTrainable, get_trainable
from trainables.report import StdoutReporter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainables", description=__doc__.splitlines()[0])
    p.add_argument("name", help="a registered trainable, e.g. mlp_bn_softmax")
    p.add_argument("--dataset", default=None, help="dataset name (digits, mnist1d, synthetic, file) or a JSON spec")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--config", default="{}", help="JSON object of knobs")
    p.add_argument("--checkpoint-dir", default=None, help="keep the latest checkpoint here")
    p.add_argument("--resume-from", default=None, help="resume from a checkpoint directory")
    args = p.parse_args(argv)
    try:
        spec = get_trainable(args.name)
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise ValueError("--config: must be a JSON object")
        if args.dataset:
            config["dataset"] = json.loads(args.dataset) if args.dataset.startswith("{") else {"name": args.dataset}
        if args.epochs is not None:
            config["epochs"] = args.epochs
        cfg = cast(TrainConfig, spec.config_model.model_validate(config))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        print(f"error: config.{loc}: {err['msg']}", file=sys.stderr)
        return 2
    except (UnknownTrainable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reporter = StdoutReporter(args.checkpoint_dir, args.resume_from)
    build = spec.load_model_builder()
    if build is None:  # a trainable without a model (busy_work, plug-ins): its own function, on stdout
        spec.load_train()(cfg.model_dump())
        return 0
    from trainables.engine import fit

    final = fit(cfg, build, reporter, test=True)
    print(json.dumps({"final": True, **{k: final[k] for k in ("epoch", "val_accuracy", "test_loss", "test_accuracy")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
