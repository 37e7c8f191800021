"""PointMLP encoder and its pure-torch point operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facephi.utils.errors import FacePhiError
from facephi.model.pointmlp import PointMLPConfig, PointMLPEncoder, PreExtraction
from facephi.model.pointops import farthest_point_sample, gather_points, knn


@pytest.fixture(autouse=True)
def _one_thread():
    """Intra-op threads spin badly on a shared, loaded CPU: these tiny models run best on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny_config(**overrides) -> PointMLPConfig:
    base = dict(
        num_points=40, embed_dim=8, res_expansion=0.5, dim_expansion=[2, 1], pre_blocks=[1, 1],
        pos_blocks=[1, 1], k_neighbors=[6, 6], reducers=[2, 2], feature_dim=12, head_hidden_dim=16,
    )
    return PointMLPConfig(**{**base, **overrides})


def _fps_reference(points: np.ndarray, count: int) -> list[int]:
    chosen = [0]
    distances = np.full(len(points), np.inf)
    for _ in range(count - 1):
        distances = np.minimum(distances, ((points - points[chosen[-1]]) ** 2).sum(-1))
        chosen.append(int(np.argmax(distances)))
    return chosen


def test_farthest_point_sample_matches_brute_force():
    xyz = torch.rand(3, 50, 3, generator=torch.Generator().manual_seed(0))
    indices = farthest_point_sample(xyz, 12)
    assert indices.shape == (3, 12) and indices.dtype == torch.long
    for b in range(3):
        assert indices[b].tolist() == _fps_reference(xyz[b].double().numpy(), 12)
    assert len(set(indices[0].tolist())) == 12
    with pytest.raises(ValueError):
        farthest_point_sample(xyz, 51)


def test_knn_and_gather_match_brute_force():
    generator = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 30, 3, generator=generator)
    queries = torch.rand(2, 5, 3, generator=generator)
    indices = knn(4, xyz, queries)
    assert indices.shape == (2, 5, 4)
    for b in range(2):
        for s in range(5):
            distances = ((xyz[b] - queries[b, s]) ** 2).sum(-1)
            assert indices[b, s].tolist() == distances.argsort()[:4].tolist()
    gathered = gather_points(xyz, indices)
    assert gathered.shape == (2, 5, 4, 3)
    assert torch.equal(gathered[1, 3, 2], xyz[1, indices[1, 3, 2]])


@pytest.mark.parametrize("name", ["pointmlp", "pointmlp-elite"])
def test_presets_shapes_and_seeded_determinism(name):
    config = PointMLPConfig.preset(name)
    assert config.anchors == [239, 119, 59, 29] and config.k_neighbors == [24] * 4
    assert PointMLPConfig.from_dict(config.to_dict()) == config
    torch.manual_seed(0)
    first = PointMLPEncoder(config).eval()
    torch.manual_seed(0)
    second = PointMLPEncoder(config).eval()
    points = torch.rand(2, 478, 3) * 2 - 1
    with torch.no_grad():
        out = first(points)
        assert out.shape == (2, 256)
        assert torch.equal(out, second(points))
    with pytest.raises(ValueError, match="478"):
        first(torch.rand(2, 100, 3))


def test_config_validation():
    with pytest.raises(FacePhiError, match="unknown PointMLP preset 'pointnet'"):
        PointMLPConfig.preset("pointnet")
    with pytest.raises(ValueError, match="equal length"):
        PointMLPConfig(pre_blocks=[1, 1])
    with pytest.raises(FacePhiError, match=r"unknown PointMLPConfig field\(s\) embed"):
        PointMLPConfig.from_dict({"embed": 3})
    with pytest.raises(FacePhiError, match="dropout: must be a finite number"):
        PointMLPConfig(dropout=float("nan"))
    assert PointMLPConfig.from_dict(PointMLPConfig.preset("pointmlp-elite").to_dict()) == \
        PointMLPConfig.preset("pointmlp-elite")
    with pytest.raises(ValueError, match="neighbours"):
        _tiny_config(k_neighbors=[6, 30])


def test_a_few_steps_reduce_a_classification_loss():
    torch.manual_seed(0)
    config = _tiny_config(dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    # Two classes of point clouds: flat discs vs elongated sticks.
    base = torch.rand(16, config.num_points, 3, generator=generator) * 2 - 1
    labels = torch.arange(16) % 2
    points = base * torch.where(labels[:, None, None] == 0, torch.tensor([1.0, 1.0, 0.1]), torch.tensor([0.1, 0.1, 1.0]))
    encoder = PointMLPEncoder(config)
    classifier = torch.nn.Linear(config.feature_dim, 2)
    optimizer = torch.optim.Adam([*encoder.parameters(), *classifier.parameters()], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(classifier(encoder(points)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in encoder.parameters())


def test_split_transfer_equals_pointmlp_concatenation():
    """The transfer layer is the Linear-BN-act of PointMLP on [neighbour ; repeated anchor]."""
    torch.manual_seed(0)
    config = _tiny_config()
    pre = PreExtraction(5, 4, 6, blocks=0, config=config).eval()
    pre.transfer.norm.running_mean.uniform_()
    grouped, anchors = torch.randn(2, 3, 7, 5), torch.randn(2, 3, 4)
    concatenated = torch.cat([grouped, anchors.unsqueeze(2).expand(-1, -1, 7, -1)], dim=-1)
    weight = torch.cat([pre.transfer.linear.weight, pre.transfer_anchor.weight], dim=1)
    reference = torch.relu(pre.transfer.norm((concatenated @ weight.T).reshape(-1, 6)))
    expected = reference.reshape(2, 3, 7, 6).amax(dim=2)
    assert torch.allclose(pre(grouped, anchors), expected, atol=1e-6)


def test_point_embedding_tells_landmarks_apart():
    """Without it the encoder is a set function of the points; with it, landmark order matters."""
    torch.manual_seed(0)
    points = torch.rand(2, 40, 3) * 2 - 1
    plain = PointMLPEncoder(_tiny_config()).eval()
    indexed = PointMLPEncoder(_tiny_config(point_embedding=True)).eval()
    assert indexed.point_embedding.shape == (40, 8)
    assert "point_embedding" not in dict(plain.named_parameters())
    with torch.no_grad():
        # FPS starts at index 0, so keep point 0 in place for the permutation-invariance check
        order = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(39) + 1])
        assert torch.allclose(plain(points), plain(points[:, order]), atol=1e-5)
        assert not torch.allclose(indexed(points), indexed(points[:, order]), atol=1e-3)


def test_standardized_input_uses_fitted_per_landmark_statistics():
    torch.manual_seed(0)
    mean_face = torch.rand(40, 3) * 2 - 1
    train = mean_face + 0.01 * torch.randn(64, 40, 3)
    model = PointMLPEncoder(_tiny_config(standardize_input=True)).eval()
    assert model.embedding.linear.in_features == 6
    model.fit_landmark_statistics(train)
    assert torch.allclose(model.input_mean, train.mean(0)) and torch.allclose(model.input_std, train.std(0))
    # the statistics are buffers: they travel with the state dict, and change the output
    copy = PointMLPEncoder(_tiny_config(standardize_input=True)).eval()
    with torch.no_grad():
        before = copy(train[:4])
        copy.load_state_dict(model.state_dict())
        assert torch.equal(copy(train[:4]), model(train[:4])) and not torch.allclose(before, model(train[:4]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.fit_landmark_statistics(train[:, :10])
    with pytest.raises(ValueError, match="standardize_input=True"):
        PointMLPEncoder(_tiny_config()).fit_landmark_statistics(train)


def test_template_grouping_fixes_the_groups_of_the_mean_face():
    torch.manual_seed(0)
    mean_face = torch.rand(40, 3) * 2 - 1
    train = mean_face + 0.01 * torch.randn(64, 40, 3)
    fixed = PointMLPEncoder(_tiny_config(grouping="template")).eval()
    with pytest.raises(RuntimeError, match="no template yet"):
        fixed(train[:2])
    fixed.fit_landmark_statistics(train)
    grouper = fixed.groupers[0]
    center = train.mean(0)
    assert grouper.anchor_index.tolist() == farthest_point_sample(center[None], grouper.groups)[0].tolist()
    # the groups are fixed: on the mean face itself, the per-sample (dynamic) PointMLP agrees
    dynamic = PointMLPEncoder(_tiny_config()).eval()
    dynamic.load_state_dict(fixed.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(fixed(center[None]), dynamic(center[None]), atol=1e-5)
        # elsewhere the groups stay those of the mean face, whatever the sample's own geometry
        moved = train[:2].flip(1)
        assert not torch.allclose(fixed(moved), dynamic(moved), atol=1e-3)
    with pytest.raises(ValueError, match="grouping"):
        _tiny_config(grouping="fixed")
