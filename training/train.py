"""Train one MDFlow stage from a YAML config; the stage (config key ``stage``) picks the networks.

    python training/train.py --config config/train/stage1.yaml --data PATH [PATH ...] --out RUN_DIR
                             [--resume] [--max-steps N] [--init MODEL.pt]
                             [--teacher TEACHER.pt (stage2)] [--student STUDENT.pt (stage3)]

The stages are training/stages.py's table. pretrain and student_pretrain (optional) train the
teacher or the student on the synthetic source's ground truth only (no --data); stage1 trains
the FastFlowNet teacher without labels; classical distils a classical OpenCV estimator's
reliable flows (the config's ``partner``) into the teacher, or the student with ``network:
student``; stage2 trains the RAFT student from the frozen ``--teacher`` (``--init``: a
previous round's student); stage3 trains the teacher from ``--init`` (its stage-1 weights)
with the frozen ``--student``. PATH is a rosbag2 (directory,
.db3 or .mcap), a ROS 1 .bag, a video file or an image folder; the config's synthetic pairs
(real photos under known motion) are mixed in. RUN_DIR gets ``latest.pt`` (the resumable
checkpoint), the model file (``teacher_fastflownet.pt`` or ``student_raft.pt``) and TensorBoard
logs under ``tb/``. Checkpoints and model files record their stage, their parent (the frozen
network's file, else the initial weights) and the files' SHA-256. Works under
``torchrun --nproc_per_node N``. training/mdflow.py runs all stages in order. SIGINT or SIGTERM
stops it after the step in flight, with ``latest.pt`` written at that step (every rank stops at the
same step; exit status 128 + the signal's number; training/stop_signals.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from mdflow_ros.files import ModelFileError, file_sha256
from mdflow_ros.models import RAFT, FastFlowNet
from mdflow_ros.models.model_file import load_model, load_model_file, save_model_file
from training.checkpoint import load_checkpoint, remove_stale_temporaries
from training.cli import OneLineParser, error_line, positive_int
from training.config import ConfigError, load_config
from training.data.training_set import build_training_set
from training.evaluate import make_validator
from training.partners import NetworkPartner, PartnerError, classical_partner
from training.stages import STAGES, check_stage, make_recipe
from training.stop_signals import TrainingStopped
from training.trainer import LATEST, ResumeError, Trainer, seed_everything

LOG = logging.getLogger("mdflow_ros.training")

MODEL_FILES = {"fastflownet": "teacher_fastflownet.pt", "raft": "student_raft.pt"}
"""The model file a run directory gets, by the architecture it trains."""

SNAPSHOTS = "snapshots"
"""The run directory's folder of model files written at every validation (deployed weights)."""

LINEAGE = ("init", "frozen")
"""Meta entries that a resumed run must share with its checkpoint."""


class StageError(ValueError):
    """A stage cannot start: missing or wrong networks, or a run directory that would be overwritten."""


def file_ref(path: str | Path | None) -> dict[str, str] | None:
    """{"path": absolute path, "sha256": hex digest} of a file, or None."""
    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def new_network(cfg: dict[str, Any]) -> nn.Module:
    """A freshly initialised network of the architecture the config's stage trains."""
    if check_stage(cfg) == "raft":
        return RAFT(train_iters=cfg["student"]["train_iters"])
    return FastFlowNet()


def _load_init(model: nn.Module, cfg: dict[str, Any], init: str | Path) -> None:
    parent = load_model_file(init)
    arch = check_stage(cfg)
    if parent.arch != arch:
        raise StageError(f"{cfg['stage']} trains a {arch}, but --init {init} holds a {parent.arch}")
    model.load_state_dict(parent.state_dict)


def _resumed_lineage(checkpoint: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The run's meta for resuming ``checkpoint``: without --init it keeps the checkpoint's init;
    a resume from other initial weights or another frozen network is refused."""
    saved = load_checkpoint(checkpoint)["meta"]
    if meta["init"] is None and saved.get("init") is not None:
        meta = dict(meta, init=saved["init"])
        if meta["parent"] is None:
            meta["parent"] = saved["init"]
    for key in LINEAGE:
        if key in saved and (saved[key] or {}).get("sha256") != (meta[key] or {}).get("sha256"):
            raise ResumeError(f"{checkpoint} was trained with {key} {saved[key]}, but this run has {meta[key]}; "
                              "refusing to resume")
    return meta


def train_stage(cfg: dict[str, Any], data: Sequence[str | Path], out: str | Path, resume: bool = False,
                max_steps: int | None = None, init: str | Path | None = None,
                frozen: str | Path | None = None) -> Path:
    """Train ``cfg["stage"]`` in ``out`` and write its model file there; returns the model file's path.

    init: model file of the trained network's starting weights (when resuming: checked against
    the checkpoint's, or taken from it when None);
    frozen: model file of the network the recipe holds frozen (stages 2 and 3). With
    ``resume`` the run continues from ``out/latest.pt`` when it exists.
    """
    stage, out = cfg["stage"], Path(out)
    if stage not in STAGES:
        raise StageError(f"stage {stage!r} is not trained by this command (stages: {sorted(STAGES)})")
    spec = STAGES[stage]
    arch = check_stage(cfg)
    if (out / LATEST).exists() and not resume:
        raise StageError(f"{out / LATEST} exists; pass --resume to continue it, or choose another --out "
                         "(refusing to overwrite training progress)")
    if (frozen is None) != (spec.partner != "network"):
        need = f"a frozen {spec.partner_arch} model file" if spec.partner == "network" else "no frozen network"
        raise StageError(f"{stage} needs {need}")
    resuming = resume and (out / LATEST).is_file()
    if stage == "stage3" and init is None and not resuming:
        raise StageError("stage3 continues the teacher: give its stage-1 model file as init (--init)")
    seed_everything(cfg["seed"])
    classical = classical_partner(cfg["partner"]) if spec.partner == "classical" else None
    try:
        partner = NetworkPartner(load_model(frozen)) if frozen is not None else classical
        recipe = make_recipe(stage, partner)
    except ValueError as err:
        raise StageError(f"{frozen}: {err}") from None
    model = new_network(cfg)
    meta = {"arch": arch, "stage": stage, "parent": file_ref(frozen or init),
            "init": file_ref(init), "frozen": file_ref(frozen), "data": [str(p) for p in data]}
    if classical is not None:
        meta["partner"] = classical.record()
    if resuming:
        meta = _resumed_lineage(out / LATEST, meta)
    elif init is not None:
        _load_init(model, cfg, init)
    try:
        pairs = build_training_set(cfg, data, classical)
    except ValueError as err:  # no data, recordings given to a stage that takes none, bad synthetic photos
        raise StageError(str(err)) from None
    path = out / MODEL_FILES[meta["arch"]]

    def snapshot(deployed: nn.Module, step: int) -> None:
        save_model_file(out / SNAPSHOTS / f"{path.stem}_step{step:06d}.pt", deployed, dict(meta, step=step, config=cfg))

    trainer = Trainer(cfg, out, model, recipe, pairs, meta, make_validator(cfg), snapshot)
    if trainer.rank == 0 and (stale := remove_stale_temporaries(out)):
        LOG.info("removed %d temporary file(s) of a killed run: %s", len(stale), ", ".join(p.name for p in stale))
    if resuming:
        trainer.resume()
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    step = trainer.run(max_steps)
    if trainer.rank == 0:
        model.load_state_dict(trainer.deployed_state())
        save_model_file(path, model, dict(meta, step=step, config=cfg))
        LOG.info("%s step %d: wrote %s", stage, step, path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (e.g. config/train/stage1.yaml)")
    parser.add_argument("--data", nargs="*", default=[], help="bags, videos or image folders")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest.pt")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many more steps")
    parser.add_argument("--init", default=None, help="start from this model file's weights (new runs only)")
    parser.add_argument("--teacher", default=None, help="stage2: the frozen teacher's model file")
    parser.add_argument("--student", default=None, help="stage3: the frozen student's model file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        frozen = {"stage2": args.teacher, "stage3": args.student}.get(cfg["stage"])
        check_stage(cfg)
        for name, value in (("--teacher", args.teacher), ("--student", args.student)):
            if value is not None and value != frozen:
                raise StageError(f"{name} does not apply to {cfg['stage']}")
        train_stage(cfg, args.data, args.out, args.resume, args.max_steps, args.init, frozen)
    except (StageError, ResumeError, ConfigError, ModelFileError, PartnerError, OSError) as err:
        sys.exit(error_line("train.py", err))
    except TrainingStopped as err:
        print(error_line("train.py", err), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("train.py: interrupted (SIGINT) outside the training loop; the last checkpoint, if any, is kept; "
              "continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
