"""The synthetic dataset: layout, determinism, persons, and classes told apart by motion only."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csre_jax.data import synthetic
from csre_jax.data.synthetic import CLASS_NAMES, generate, make_splits

NUM_CLASSES = 10


@functools.partial(jax.jit, static_argnames="num_classes")
def _logistic_regression(train_x, train_y, test_x, *, num_classes, l2):
    """Test predictions of an L2-regularised multinomial logistic regression on standardised
    features, fitted by 1,000 full-batch Nesterov gradient steps."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6

    def design(x):
        return jnp.concatenate([(x - mean) / std, jnp.ones((len(x), 1))], axis=1)

    a, onehot = design(train_x), jax.nn.one_hot(train_y, num_classes)
    step_size = 1.0 / (0.5 * jnp.linalg.norm(a, 2) ** 2 / len(a) + l2)

    def step(i, carry):
        w, look_ahead = carry
        grad = a.T @ (jax.nn.softmax(a @ look_ahead) - onehot) / len(a) + l2 * look_ahead
        w_next = look_ahead - step_size * grad
        return w_next, w_next + i / (i + 3) * (w_next - w)

    zeros = jnp.zeros((a.shape[1], num_classes))
    w, _ = jax.lax.fori_loop(0, 1000, step, (zeros, zeros))
    return jnp.argmax(design(test_x) @ w, axis=1)


def _accuracy(train, test, features, l2) -> float:
    predicted = _logistic_regression(
        features(train["x"]), train["label"], features(test["x"]), num_classes=NUM_CLASSES, l2=l2
    )
    return float(np.mean(np.asarray(predicted) == test["label"]))


def _mean_pose(x):
    return x.mean(axis=2).reshape(len(x), -1)


def _mean_speed(x):
    return np.abs(np.diff(x, axis=2)).mean(axis=2).reshape(len(x), -1)


@pytest.fixture(scope="module")
def splits():
    return make_splits(2000, 1000, seed=0, num_classes=NUM_CLASSES)


def test_time_averaged_pose_does_not_reveal_the_class(splits):
    """The average pose carries no class information: a linear model on it stays near chance
    with weak and with strong regularisation."""
    train, test = splits
    best = max(_accuracy(train, test, _mean_pose, l2) for l2 in (1e-3, 1e-1))
    assert best <= 1 / NUM_CLASSES + 0.15


def test_motion_reveals_the_class(splits):
    """Positive control: the same model on per-joint mean speed separates the classes."""
    train, test = splits
    assert _accuracy(train, test, _mean_speed, 1e-2) >= 0.8


def test_layout_dtypes_and_balanced_labels():
    data = generate(70, seed=0, num_classes=7, num_frames=16)
    assert data["x"].shape == (70, 3, 16, 25, 2) and data["x"].dtype == np.float32
    assert data["label"].shape == (70,) and data["label"].dtype == np.int32
    np.testing.assert_array_equal(np.bincount(data["label"], minlength=7), np.full(7, 10))
    assert generate(4, seed=0, num_persons=1)["x"].shape == (4, 3, 64, 25, 1)


def test_deterministic_by_seed():
    first, again, other = (generate(40, seed=s, num_frames=32) for s in (3, 3, 4))
    for key in ("x", "label"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.allclose(first["x"], other["x"])


def test_splits_are_independent_and_cover_every_class():
    train, test = make_splits(120, 60, seed=1, num_frames=32)
    again, _ = make_splits(120, 60, seed=1, num_frames=32)
    np.testing.assert_array_equal(train["x"], again["x"])
    assert not np.allclose(train["x"][:60], test["x"])
    for split in (train, test):
        assert set(split["label"]) == set(range(NUM_CLASSES))


def test_persons_one_or_two_absent_is_zero_and_presence_ignores_class():
    data = generate(1200, seed=2, num_frames=16)
    x, label = data["x"], data["label"]
    frame_present = np.any(x != 0, axis=(1, 3))  # (N, T, M)
    assert frame_present[..., 0].all()
    two = frame_present[..., 1].any(axis=1)
    # A person is there in every frame or in none.
    assert (frame_present[..., 1] == two[:, None]).all()
    assert 0 < two.mean() < 1
    rates = np.array([two[label == c].mean() for c in range(NUM_CLASSES)])
    assert np.ptp(rates) < 0.25  # about 0.75 everywhere, up to sampling noise


def test_skeletons_are_rigid_upright_and_ntu_sized():
    x = generate(60, seed=5, num_frames=32, noise=0.0)["x"][..., 0]  # person 1, (N, 3, T, V)
    children = [j for j, p in enumerate(synthetic._PARENT) if p >= 0]
    parents = [synthetic._PARENT[j] for j in children]
    lengths = np.linalg.norm(x[..., children] - x[..., parents], axis=1)  # (N, T, bones)
    # Bones never stretch.
    np.testing.assert_allclose(lengths, np.broadcast_to(lengths[:, :1], lengths.shape), atol=1e-5)
    upper_arm = lengths[..., children.index(5)]  # NTU joints 5 -> 6 (left shoulder -> elbow)
    assert upper_arm.min() > 0.18 and upper_arm.max() < 0.32
    head, spine_mid, left_foot = x[:, 1, :, 3], x[:, 1, :, 1], x[:, 1, :, 15]
    assert (head > spine_mid).all() and (spine_mid > left_foot).all()
    np.testing.assert_allclose(x[:, :, 0, 1], 0, atol=1e-6)  # NTU origin: first-frame spine mid


def _moved_by(bone: int) -> set[int]:
    """Joints a rotation of `bone` (named by its child joint) moves: its whole subtree."""
    moved = set()
    for joint in range(25):
        walk = joint
        while walk >= 0 and walk != bone:
            walk = synthetic._PARENT[walk]
        if walk == bone:
            moved.add(joint)
    return moved


def test_coupled_dofs_move_disjoint_joints():
    """Rotations may share a phase only if they move disjoint joints: coupled rotations of one
    chain would shift a joint's average position and leak the class. (Translations add to the
    positions, so their coupling never shifts an average.)"""
    for name, moves in synthetic._ACTIONS.items():
        groups = {}
        for person, dof, _, group, _ in moves:
            if group is not None and dof in synthetic._ROTATIONS:
                bone = synthetic._ROTATIONS[dof][0]
                groups.setdefault((person, group), []).append(_moved_by(bone))
        for moved in groups.values():
            assert sum(map(len, moved)) == len(set().union(*moved)), name


def test_rejects_unsupported_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        generate(4, seed=0, num_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError, match="num_classes"):
        generate(4, seed=0, num_classes=0)
    with pytest.raises(ValueError, match="num_persons"):
        generate(4, seed=0, num_persons=3)
