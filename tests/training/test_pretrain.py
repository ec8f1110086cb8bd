"""The supervised pre-training stages on the synthetic source: their losses pull each network
towards the ground truth, they refuse recordings, and the student's model file starts stage 2."""
import pytest
import torch

from mdflow_ros.models import RAFT, FastFlowNet
from mdflow_ros.models.model_file import load_model_file, save_model_file
from training.augment import AugmentConfig, Augmentor
from training.config import DEFAULTS, merge
from training.data.synthetic_pairs import SyntheticPairs
from training.stages import STAGES
from training.train import MODEL_FILES, StageError, train_stage

TINY = {
    "seed": 3,
    "data": {"crop": [64, 64], "synthetic_pairs": 4, "num_workers": 0},
    "train": {"steps": 2, "batch_size": 2, "threads": 1, "log_every": 1, "checkpoint_every": 1, "val_every": 1000},
    "student": {"train_iters": 2},
    "validation": {"synthetic_pairs": 0, "paths": []},
}
NO_APPEARANCE = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, gamma=(1.0, 1.0), noise_std=0.0)
EPE_TERM = {"pretrain": "epe_level2", "student_pretrain": "epe"}
"""The logged term that is the finest prediction's end-point error against the ground truth."""


def tiny_config(stage: str) -> dict:
    return merge(DEFAULTS, dict(TINY, stage=stage))


@pytest.mark.parametrize("stage", ["pretrain", "student_pretrain"])
def test_pretraining_fits_the_ground_truth_of_a_fixed_batch(stage):
    torch.manual_seed(0)
    net = RAFT(train_iters=2) if STAGES[stage].trains == "raft" else FastFlowNet()
    data = SyntheticPairs(2, (64, 128), labels="flow")
    batch = {k: torch.stack([data[(i, 5)][k] for i in range(2)]) for k in ("img1", "img2", "flow", "valid")}
    assert batch["flow"].abs().max() > 1.0, "the synthetic pairs move"
    aug = Augmentor(NO_APPEARANCE, torch.Generator().manual_seed(0))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    cfg = tiny_config(stage)["loss"]
    epes = []
    for step in range(25):
        loss, terms = STAGES[stage].recipe(net.train(), batch, aug, cfg, step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        epes.append(terms[EPE_TERM[stage]])
    assert min(epes[-5:]) < 0.7 * epes[0], f"{stage}: EPE against the ground truth went {epes[0]:.2f} -> {epes[-5:]}"


def test_pretraining_refuses_recordings(tmp_path):
    with pytest.raises(StageError, match="student_pretrain stage trains on synthetic pairs only"):
        train_stage(tiny_config("student_pretrain"), [str(tmp_path / "my_run.mcap")], tmp_path / "run")


def test_student_pretraining_writes_a_student_that_stage2_continues(tmp_path):
    pre = train_stage(tiny_config("student_pretrain"), [], tmp_path / "pre")
    assert pre.name == MODEL_FILES["raft"]
    model = load_model_file(pre)
    assert (model.arch, model.meta["stage"], model.meta["step"]) == ("raft", "student_pretrain", 2)

    teacher = tmp_path / "teacher_fastflownet.pt"
    save_model_file(teacher, FastFlowNet(), {"stage": "stage1"})
    student = train_stage(merge(tiny_config("stage2"), {"train": {"steps": 1}}), [], tmp_path / "s2", init=pre,
                          frozen=teacher)
    meta = load_model_file(student).meta
    assert (meta["stage"], meta["init"]["path"], meta["frozen"]["path"]) == ("stage2", str(pre.resolve()),
                                                                            str(teacher.resolve()))
