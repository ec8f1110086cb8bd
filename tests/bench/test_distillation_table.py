"""bench/distillation_table.py: which rows a partial table trains, adopted model files, and checks on the rows present."""
from pathlib import Path

import pytest

from bench import distillation_table as table
from mdflow_ros.models import FastFlowNet
from mdflow_ros.models.model_file import save_model_file
from training.config import load_pipeline_config
from training.evaluate import GroundTruthSet
from training.mdflow import PipelineError

SHIPPED_PIPELINE = Path(__file__).resolve().parents[2] / "config" / "train" / "mdflow_shipped.yaml"


def names(variants):
    return [v.name for v in variants]


def test_a_partial_table_trains_the_named_rows_and_what_they_start_from():
    assert names(table.selected_variants(None, [])) == [v.name for v in table.VARIANTS]
    assert names(table.selected_variants(["stage3"], [])) == ["stage1", "stage2", "stage3"]
    assert names(table.selected_variants(["stage3-nomask"], ["stage1"])) == ["stage1", "stage2-nomask", "stage3-nomask"]
    adopted = table.selected_variants(["stage3", "stage1-more"], ["stage1", "stage2"])
    assert names(adopted) == ["stage1", "stage2", "stage3", "stage1-more"]


def test_an_unknown_row_is_refused_with_the_choices():
    with pytest.raises(SystemExit, match="unknown variant.*stage4.*stage1, stage2"):
        table.selected_variants(["stage4"], [])


def test_given_models_are_adopted_untrained_and_a_changed_one_is_refused(tmp_path):
    teacher = tmp_path / "teacher.pt"
    save_model_file(teacher, FastFlowNet(), {"stage": "stage1", "step": 7})
    _, configs = load_pipeline_config(SHIPPED_PIPELINE)
    models = table.train_variants(configs, [], tmp_path / "run", None, 1, {"stage1": teacher}, ["stage1"])
    assert models == {"stage1": teacher.resolve()}
    save_model_file(teacher, FastFlowNet(), {"stage": "stage1", "step": 8})
    with pytest.raises(PipelineError, match="missing or changed"):
        table.train_variants(configs, [], tmp_path / "run", None, 1, {"stage1": teacher}, ["stage1"])


def test_the_table_states_only_the_checks_whose_rows_it_has(tmp_path):
    models = {}
    for name, step in (("stage1", 500), ("stage2", 300)):
        models[name] = tmp_path / f"{name}.pt"
        save_model_file(models[name], FastFlowNet(), {"step": step})
    sets = [GroundTruthSet("a", []), GroundTruthSet("b", [])]
    epe = {"zero": (9.0, 9.0), "stage1": (2.0, 4.0), "stage2": (1.0, 5.0)}
    results = {row: {s.name: {"epe": e} for s, e in zip(sets, values)} for row, values in epe.items()}
    _, configs = load_pipeline_config(SHIPPED_PIPELINE)
    text = table.markdown(results, models, sets, configs, "cmd")
    assert "| stage2 | S after stage 2, reliable mask M" in text and "| 300 | 1.000 | 5.000 | 3.000 |" in text
    assert "(stage2 < stage1) | 1 of 2 sets | 3.000 vs 3.000 |" in text
    assert "stage3" not in text and "nomask" not in text
