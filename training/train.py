"""Train one MDFlow stage from a YAML config (stage 1: the unsupervised teacher).

    python training/train.py --config config/train/stage1.yaml --data PATH [PATH ...] --out RUN_DIR
                             [--resume] [--max-steps N] [--init MODEL.pt]

PATH is a rosbag2 (directory, .db3 or .mcap), a ROS 1 .bag, a video file or an image folder;
the config's synthetic pairs (real photos under known motion) are mixed in. RUN_DIR gets
``latest.pt`` (the resumable checkpoint), ``teacher_fastflownet.pt`` (the model file) and
TensorBoard logs under ``tb/``. Works under ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import load_model_file, save_model_file
from training.config import load_config
from training.data.training_set import build_training_set
from training.evaluate import make_validator
from training.stages import RECIPES
from training.trainer import LATEST, Trainer, seed_everything

LOG = logging.getLogger("mdflow_ros.training")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (e.g. config/train/stage1.yaml)")
    parser.add_argument("--data", nargs="*", default=[], help="bags, videos or image folders")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest.pt")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps")
    parser.add_argument("--init", default=None, help="start from this model file's weights (new runs only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = load_config(args.config)
    out = Path(args.out)
    if (out / LATEST).exists() and not args.resume:
        sys.exit(f"train.py: {out / LATEST} exists; pass --resume to continue it, or choose another --out "
                 "(refusing to overwrite training progress)")
    if cfg["stage"] not in RECIPES:
        sys.exit(f"train.py: stage {cfg['stage']!r} is not trained by this command (stages: {sorted(RECIPES)})")
    seed_everything(cfg["seed"])
    model = FastFlowNet()
    meta = {"arch": "fastflownet", "stage": cfg["stage"], "parent": None, "data": [str(p) for p in args.data]}
    if args.init and not args.resume:
        parent = load_model_file(args.init)
        model.load_state_dict(parent.state_dict)
        meta["parent"] = str(args.init)
    dataset = build_training_set(cfg, args.data)
    trainer = Trainer(cfg, out, model, RECIPES[cfg["stage"]], dataset, meta, make_validator(cfg))
    if args.resume and not trainer.resume():
        LOG.info("no checkpoint in %s yet: starting a new run", out)
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    step = trainer.run(args.max_steps)
    if trainer.rank == 0:
        save_model_file(out / "teacher_fastflownet.pt", model, dict(meta, step=step, config=cfg))
        LOG.info("step %d: wrote %s", step, out / "teacher_fastflownet.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
