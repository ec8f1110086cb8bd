"""Run MDFlow's training end to end: stage 1 (or the classical round) -> 2 -> 3 (then 2 -> 3 again for more rounds).

    python training/mdflow.py --config config/train/mdflow.yaml --data PATH [PATH ...] --out RUN_DIR
                              [--resume] [--max-steps-per-stage N] [--stage1-model TEACHER.pt]

Stage 1 trains the FastFlowNet teacher without labels, or, with ``first: classical`` in the
pipeline file, the classical round distils an OpenCV estimator's reliable flows into it
(``config/train/mdflow_classical.yaml``); stage 2 distils the frozen teacher's
reliable flows into the RAFT student; stage 3 distils the frozen student back into the teacher,
which continues from its latest weights. Round r >= 2 repeats stages 2 and 3, the student
continuing from its previous round. Every stage runs in ``RUN_DIR/<round>-<stage>/``
(``1-stage1`` or ``1-classical``, ``1-stage2``, ``1-stage3``, ``2-stage2``, ...) with its own ``latest.pt`` and
model file, and is complete when its ``done.json`` (written atomically after the model file)
names a model file with the recorded SHA-256. ``--resume`` skips complete stages and resumes
the first incomplete one from its checkpoint, wherever the previous run was killed.
``--max-steps-per-stage N`` caps every stage at N steps (quick runs; a capped stage counts as
complete afterwards); ``--stage1-model``
takes an already trained teacher as the first stage's result. The deployed network is the teacher of
the last stage 3, ``RUN_DIR/<rounds>-stage3/teacher_fastflownet.pt``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdflow_ros.files import ModelFileError, atomic_write_bytes, file_sha256
from training.cli import error_line
from training.config import ConfigError, load_pipeline_config
from training.stages import check_stage
from training.stop_signals import TrainingStopped
from training.train import StageError, train_stage
from training.trainer import ResumeError

LOG = logging.getLogger("mdflow_ros.training")

DONE = "done.json"


class PipelineError(RuntimeError):
    """The run directory is inconsistent with the pipeline asked for."""


def stage_plan(rounds: int, first: str = "stage1") -> list[tuple[int, str]]:
    """(round, stage) in execution order: (1, first), then (r, stage2), (r, stage3) for every round r."""
    return [(1, first)] + [(r, s) for r in range(1, rounds + 1) for s in ("stage2", "stage3")]


def stage_dir(out: Path, round_: int, stage: str) -> Path:
    """The run directory of one stage: RUN_DIR/<round>-<stage>."""
    return out / f"{round_}-{stage}"


def completed_model(directory: Path) -> Path | None:
    """The model file of a complete stage (its done.json), None while the stage is incomplete."""
    marker = directory / DONE
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    model = directory / info["model"]
    if not model.is_file() or file_sha256(model) != info["sha256"]:
        raise PipelineError(f"{marker} names {model} with SHA-256 {info['sha256'][:12]}..., but that file is missing "
                            "or changed; restore it or delete the stage directory to train the stage again")
    return model


def mark_done(directory: Path, round_: int, stage: str, model: Path) -> None:
    """Write done.json (atomically) for a stage whose model file is ``model``.

    A model file inside the stage's directory is named relative to it, any other absolutely.
    """
    model = Path(model).resolve()
    name = model.name if model.parent == directory.resolve() else str(model)
    info = {"round": round_, "stage": stage, "model": name, "sha256": file_sha256(model)}
    atomic_write_bytes(directory / DONE, (json.dumps(info, indent=1) + "\n").encode())


def adopt_model(directory: Path, round_: int, stage: str, given: Path) -> Path:
    """Take an already trained model file as a stage's result: recorded as done, or checked against the record."""
    recorded = completed_model(directory)
    if recorded is None:
        mark_done(directory, round_, stage, given)
        return completed_model(directory)
    if file_sha256(recorded) != file_sha256(given):
        raise PipelineError(f"{given} differs from the model this run used for {stage}, {recorded}")
    return recorded


def capped(cfg: dict[str, Any], max_steps: int | None) -> dict[str, Any]:
    """A copy of a stage config with train.steps at most ``max_steps``."""
    out = copy.deepcopy(cfg)
    if max_steps is not None:
        out["train"]["steps"] = min(out["train"]["steps"], max_steps)
    return out


def run_pipeline(rounds: int, configs: dict[str, dict[str, Any]], data: Sequence[str | Path], out: str | Path,
                 max_steps_per_stage: int | None = None, stage1_model: str | Path | None = None) -> dict[str, Path]:
    """Run (or resume) every stage in ``out``; returns the final {"teacher": path, "student": path}.

    configs: the stage configs of training.config.load_pipeline_config, the first stage first.
    Complete stages are skipped; an incomplete one resumes from its latest.pt when it has one.
    """
    out = Path(out)
    first = next(iter(configs))
    models: dict[str, Path] = {}
    for round_, stage in stage_plan(rounds, first):
        directory = stage_dir(out, round_, stage)
        if stage == first and stage1_model is not None:
            model = adopt_model(directory, round_, stage, Path(stage1_model))
        else:
            model = completed_model(directory)
        if model is None:
            init = {"stage2": models.get("student"), "stage3": models.get("teacher")}.get(stage)
            frozen = {"stage2": models.get("teacher"), "stage3": models.get("student")}.get(stage)
            LOG.info("round %d, %s: training in %s", round_, stage, directory)
            model = train_stage(capped(configs[stage], max_steps_per_stage), data, directory, resume=True,
                                init=init, frozen=frozen)
            mark_done(directory, round_, stage, model)
        else:
            LOG.info("round %d, %s: complete (%s)", round_, stage, model)
        models["student" if stage == "stage2" else "teacher"] = model
    return models


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (e.g. config/train/mdflow.yaml)")
    parser.add_argument("--data", nargs="*", default=[], help="bags, videos or image folders")
    parser.add_argument("--out", required=True, help="run directory (one subdirectory per stage)")
    parser.add_argument("--resume", action="store_true", help="continue a killed or extended run in RUN_DIR")
    parser.add_argument("--max-steps-per-stage", type=int, default=None, help="cap every stage at N steps")
    parser.add_argument("--stage1-model", default=None, help="a trained teacher to take as the first stage's result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    started = sorted(p.name for p in out.glob("*-*") if p.is_dir()) if out.is_dir() else []
    if started and not args.resume:
        sys.exit(f"mdflow.py: {out} already holds stages {', '.join(started)}; pass --resume to continue it, "
                 "or choose another --out (refusing to overwrite training progress)")
    try:
        rounds, configs = load_pipeline_config(args.config)
        for stage, cfg in configs.items():
            if check_stage(cfg) != ("raft" if stage == "stage2" else "fastflownet"):
                raise ConfigError(f"stages.{stage}: a pipeline's {stage} trains the "
                                  f"{'student' if stage == 'stage2' else 'teacher'}; network: {cfg['network']} does not apply")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "mdflow.yaml", Path(args.config).read_bytes())
        models = run_pipeline(rounds, configs, args.data, out, args.max_steps_per_stage, args.stage1_model)
    except (StageError, ResumeError, ConfigError, ModelFileError, PipelineError, OSError) as err:
        sys.exit(error_line("mdflow.py", err))
    except TrainingStopped as err:
        print(error_line("mdflow.py", err), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("mdflow.py: interrupted (SIGINT) outside the training loop; the last checkpoint, if any, is kept; "
              "continue with --resume", file=sys.stderr)
        return 130
    LOG.info("done: deployable teacher %s, student %s", models["teacher"], models["student"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
