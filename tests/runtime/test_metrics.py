"""EPE and Fl-all against values worked out by hand on tiny flows."""
import numpy as np
import pytest

from mdflow_ros.metrics import FlowMetrics, epe, epe_map, evaluate_flow, fl_all

# gt and an estimate whose errors are 0, 5, 4 and 1 pixels
GT = np.array([[[0.0, 0.0], [3.0, 4.0]],
               [[10.0, 0.0], [0.0, -1.0]]], dtype=np.float32)
FLOW = np.array([[[0.0, 0.0], [6.0, 8.0]],
                 [[10.0, 4.0], [0.6, -0.2]]], dtype=np.float32)


def test_epe_map_by_hand():
    np.testing.assert_allclose(epe_map(FLOW, GT), [[0.0, 5.0], [4.0, 1.0]], atol=1e-6)
    assert epe_map(FLOW, GT).dtype == np.float32


def test_epe_and_fl_all_by_hand():
    assert epe(FLOW, GT) == pytest.approx(2.5)
    # errors 5 (|gt| 5) and 4 (|gt| 10) exceed 3 px and 5 % of |gt|; 0 and 1 do not
    assert fl_all(FLOW, GT) == pytest.approx(50.0)


def test_masks_select_pixels():
    valid = np.array([[True, False], [True, True]])
    assert epe(FLOW, GT, valid) == pytest.approx(5.0 / 3.0)
    assert fl_all(FLOW, GT, valid) == pytest.approx(100.0 / 3.0)
    assert epe(FLOW, GT, valid.astype(np.uint8)) == pytest.approx(5.0 / 3.0)


def test_outlier_needs_both_conditions():
    gt = np.array([[[100.0, 0.0], [1.0, 0.0]]], dtype=np.float32)
    flow = np.array([[[104.0, 0.0], [3.5, 0.0]]], dtype=np.float32)
    # 4 px > 3 px but < 5 % of 100 px; 2.5 px > 5 % of 1 px but < 3 px: neither is an outlier
    assert fl_all(flow, gt) == 0.0
    assert epe(flow, gt) == pytest.approx(3.25)


def test_unknown_ground_truth_is_left_out():
    gt = GT.copy()
    gt[0, 1] = (1e10, 1e10)
    gt[1, 0] = (np.nan, 0.0)
    assert epe(FLOW, gt) == pytest.approx(0.5)
    assert evaluate_flow(FLOW, gt)["n_valid"] == 2


def test_evaluate_flow_and_flow_metrics():
    result = evaluate_flow(FLOW, GT, np.ones((2, 2), dtype=bool))
    assert set(result) == {"epe", "fl_all", "n_valid"}
    assert result["epe"] == pytest.approx(2.5)
    assert result["fl_all"] == pytest.approx(50.0)
    assert result["n_valid"] == 4
    metrics = FlowMetrics.compute(FLOW, GT)
    assert metrics.as_dict() == result
    assert isinstance(metrics.n_valid, int) and isinstance(metrics.epe, float)


def test_perfect_flow():
    assert epe(GT, GT) == 0.0 and fl_all(GT, GT) == 0.0


@pytest.mark.parametrize("flow, gt, valid, message", [
    (FLOW[:, :1], GT, None, "same shape"),
    (np.zeros((2, 2, 3), dtype=np.float32), GT, None, r"\(H, W, 2\)"),
    (FLOW, GT[..., 0], None, r"gt must have shape \(H, W, 2\)"),
    (FLOW, GT, np.ones((2, 3), dtype=bool), "valid must have shape"),
    (FLOW, GT, np.zeros((2, 2), dtype=bool), "no pixel to evaluate"),
    (FLOW, np.full_like(GT, np.nan), None, "no pixel to evaluate"),
    (np.where([[[False], [False]], [[False], [True]]], np.nan, FLOW), GT, None, "non-finite"),
    (FLOW.astype(str), GT, None, "real numbers"),
])
def test_bad_input_gives_clear_errors(flow, gt, valid, message):
    with pytest.raises(ValueError, match=message):
        evaluate_flow(flow, gt, valid)


def test_non_finite_estimate_outside_the_mask_is_fine():
    flow = FLOW.copy()
    flow[0, 1] = np.nan
    valid = np.array([[True, False], [True, True]])
    assert epe(flow, GT, valid) == pytest.approx(5.0 / 3.0)
