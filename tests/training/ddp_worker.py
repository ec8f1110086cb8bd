"""Run by tests/training/test_trainer.py under torchrun: a few DDP steps, then each rank saves its weights."""
import sys
from pathlib import Path

import torch

from mdflow_ros.models import FastFlowNet
from training.config import load_config
from training.data.training_set import build_training_set
from training.stages import STAGES
from training.trainer import Trainer, seed_everything

config_path, bag, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
cfg = load_config(config_path)
seed_everything(cfg["seed"])
model = FastFlowNet()
trainer = Trainer(cfg, out, model, STAGES["stage1"].recipe, build_training_set(cfg, [bag]), {"arch": "fastflownet"})
trainer.run()
torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / f"rank{trainer.rank}.pt")
