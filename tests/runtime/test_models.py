"""The networks: parameter counts, output shapes per mode, and the shared normalisation."""
import torch

from mdflow_ros.flow import normalize_pair
from mdflow_ros.models import RAFT, FastFlowNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_papers_configurations():
    assert n_params(FastFlowNet()) == 1_366_114
    assert n_params(RAFT()) == 5_257_536


def test_fastflownet_returns_five_levels_in_training_and_the_finest_in_eval():
    net = FastFlowNet()
    img = torch.rand(1, 3, 128, 192)
    levels = net.train()(img, img)
    assert [tuple(f.shape[-2:]) for f in levels] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    with torch.no_grad():
        assert net.eval()(img, img).shape == (1, 2, 32, 48)


def test_raft_returns_every_iteration_in_training_and_full_resolution_in_eval():
    net = RAFT(train_iters=3, test_iters=2)
    img = torch.rand(1, 3, 64, 96)
    preds = net.train()(img, img)
    assert len(preds) == 3 and preds[-1].shape == (1, 2, 64, 96)
    with torch.no_grad():
        assert net.eval()(img, img).shape == (1, 2, 64, 96)


def test_normalisation_subtracts_one_scalar_per_sample_shared_by_both_frames():
    a = torch.full((2, 3, 4, 4), 0.2)
    b = torch.full((2, 3, 4, 4), 0.6)
    b[1] = 1.0
    na, nb = normalize_pair(a, b)
    assert torch.allclose(na[0], torch.full_like(na[0], -0.2)) and torch.allclose(nb[0], torch.full_like(nb[0], 0.2))
    assert torch.allclose(na[1], torch.full_like(na[1], -0.4))
    nb2, na2 = normalize_pair(b, a)
    assert torch.allclose(na2, na) and torch.allclose(nb2, nb)
