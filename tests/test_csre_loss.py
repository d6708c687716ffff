"""The CSRE bank and loss: parity with the official call, bank semantics, sampling modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csre_jax.csre import loss as loss_module
from csre_jax.csre.bank import MemoryBank, create_bank, write
from csre_jax.csre.loss import ContrastConfig, bank_loss, info_nce, normalize, select_slots


@pytest.fixture(scope="module")
def official(shared_dir):
    return dict(np.load(shared_dir / "fixtures" / "contrast_loss.npz"))


def _fixture_bank(official) -> MemoryBank:
    return MemoryBank(
        features=jnp.asarray(official["bank_before"]),
        labels=jnp.asarray(official["bank_labels"], jnp.int32),
        filled=jnp.asarray(official["filled_before"] > 0),
    )


def _fixture_call(official, features):
    config = ContrastConfig(
        num_positives=int(official["num_positives"]),
        num_negatives=int(official["num_negatives"]),
        temperature=float(official["temperature"]),
    )
    return bank_loss(
        features,
        jnp.asarray(official["labels"], jnp.int32),
        jnp.asarray(official["indices"], jnp.int32),
        _fixture_bank(official),
        jax.random.key(0),
        config,
        random_negative_slots=jnp.asarray(official["random_negative_slots"], jnp.int32),
    )


def test_loss_and_gradient_match_official_call(official):
    features = jnp.asarray(official["features"])
    loss, _, metrics = _fixture_call(official, features)
    np.testing.assert_allclose(float(loss), float(official["loss"]), rtol=1e-5)
    assert int(metrics["valid_anchors"]) == int(official["valid_anchor"].sum())

    grad = jax.grad(lambda f: _fixture_call(official, f)[0])(features)
    reference = official["grad_features"]
    rel = np.abs(np.asarray(grad) - reference).max() / np.abs(reference).max()
    assert rel < 1e-4, rel


def test_bank_and_flags_after_update_match_official_call(official):
    _, bank, _ = jax.jit(lambda f: _fixture_call(official, f))(jnp.asarray(official["features"]))
    np.testing.assert_array_equal(np.asarray(bank.features), official["bank_after"])
    np.testing.assert_array_equal(np.asarray(bank.filled), official["filled_after"] > 0)
    np.testing.assert_array_equal(np.asarray(bank.labels), official["bank_labels"])


def _tiny_setup(num_slots=40, num_classes=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    slot_labels = np.arange(num_slots) % num_classes
    bank = create_bank(slot_labels, dim)
    return rng, slot_labels, bank


def test_write_overwrites_detached_rows_and_sets_flags():
    rng, _, bank = _tiny_setup()
    idx = jnp.array([3, 7, 11])
    rows = normalize(jnp.asarray(rng.normal(size=(3, 8)), jnp.float32))
    bank = write(bank, idx, rows)
    np.testing.assert_array_equal(np.asarray(bank.features[idx]), np.asarray(rows))
    assert set(np.flatnonzero(np.asarray(bank.filled))) == {3, 7, 11}
    # a second write replaces the rows, no moving average
    rows2 = normalize(jnp.asarray(rng.normal(size=(3, 8)), jnp.float32))
    bank = write(bank, idx, rows2)
    np.testing.assert_array_equal(np.asarray(bank.features[idx]), np.asarray(rows2))
    # gradients never flow into the stored copy
    grad = jax.grad(lambda r: write(bank, idx, r).features.sum())(rows2)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_padding_slots_are_never_pools():
    bank = create_bank(np.array([0, 1, 0, 1, 0]), 4, pad_to_multiple=4)
    assert bank.num_slots == 8
    np.testing.assert_array_equal(np.asarray(bank.labels[5:]), -1)
    assert not bool(bank.filled.any())


def test_write_happens_before_compare_and_skip_rule():
    """The batch is written before similarities: its own slots count towards the pools."""
    config = ContrastConfig(num_positives=2, num_negatives=3)
    _, slot_labels, bank = _tiny_setup(num_slots=8, num_classes=2)
    # 4 samples, 2 per class: each anchor sees 2 positives (itself and its class-mate)
    # and 2 negatives after the write, fewer than 3 negatives: every anchor is skipped.
    idx = jnp.array([0, 1, 2, 3])
    labels = jnp.asarray(slot_labels[:4])
    feats = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32)
    loss, bank, metrics = bank_loss(feats, labels, idx, bank, jax.random.key(0), config)
    assert float(loss) == 0.0 and int(metrics["valid_anchors"]) == 0
    assert int(bank.filled.sum()) == 4
    assert jnp.all(
        jax.grad(lambda f: bank_loss(f, labels, idx, bank, jax.random.key(0), config)[0])(feats)
        == 0
    )
    # the next batch brings the pools to 4 positives/4 negatives: the write alone makes them valid
    idx2 = jnp.array([4, 5, 6, 7])
    labels2 = jnp.asarray(slot_labels[4:])
    loss, bank, metrics = bank_loss(feats, labels2, idx2, bank, jax.random.key(0), config)
    assert int(metrics["valid_anchors"]) == 4 and float(loss) > 0


def _random_bank_state(seed=2, num_slots=40, num_classes=4, dim=8):
    rng = np.random.default_rng(seed)
    slot_labels = np.arange(num_slots) % num_classes
    table = np.asarray(normalize(jnp.asarray(rng.normal(size=(num_slots, dim)), jnp.float32)))
    queries = np.asarray(normalize(jnp.asarray(rng.normal(size=(3, dim)), jnp.float32)))
    labels = np.array([0, 1, 2])
    filled = np.ones(num_slots, bool)
    filled[::7] = False  # some empty slots, which must never be chosen
    same = labels[:, None] == slot_labels[None, :]
    return queries @ table.T, same & filled, ~same & filled


@pytest.mark.parametrize("pos_mode", ["hard", "random", "hard+random"])
@pytest.mark.parametrize("neg_mode", ["hard", "random", "hard+random"])
def test_selected_sets_follow_the_sampling_modes(pos_mode, neg_mode):
    sims, positives, negatives = _random_bank_state()
    config = ContrastConfig(
        num_positives=3, num_negatives=5, positive_sampling=pos_mode, negative_sampling=neg_mode
    )
    pos_sets, neg_sets, enough = select_slots(
        jnp.asarray(sims), jnp.asarray(positives), jnp.asarray(negatives), jax.random.key(1), config
    )
    expected_enough = (positives.sum(1) >= 3) & (negatives.sum(1) >= 5)
    np.testing.assert_array_equal(np.asarray(enough), expected_enough)
    assert len(pos_sets) == len(pos_mode.split("+"))
    assert len(neg_sets) == len(neg_mode.split("+"))
    for sets, pool, k, mode in (
        (pos_sets, positives, 3, pos_mode),
        (neg_sets, negatives, 5, neg_mode),
    ):
        for which, chosen in zip(mode.split("+"), sets, strict=True):
            chosen = np.asarray(chosen)
            for i in range(3):
                assert len(set(chosen[i])) == k, "drawn without replacement"
                assert pool[i, chosen[i]].all(), "only filled slots of the right pool"
                if which == "hard":
                    candidates = np.flatnonzero(pool[i])
                    order = sims[i, candidates] if pool is positives else -sims[i, candidates]
                    expected = candidates[np.argsort(order, kind="stable")[:k]]
                    assert set(chosen[i]) == set(expected)


def test_random_sets_are_uniform_over_the_pool():
    sims, positives, negatives = _random_bank_state()
    config = ContrastConfig(num_positives=3, num_negatives=5, negative_sampling="random")
    select = jax.jit(
        lambda key: select_slots(
            jnp.asarray(sims), jnp.asarray(positives), jnp.asarray(negatives), key, config
        )[1][0]
    )
    draws = 2000
    counts = np.zeros(sims.shape[1])
    for key in jax.random.split(jax.random.key(0), draws):
        counts += np.bincount(np.asarray(select(key))[0], minlength=sims.shape[1])
    pool = np.flatnonzero(negatives[0])
    assert counts[~negatives[0]].sum() == 0
    np.testing.assert_allclose(counts[pool] / draws, 5 / len(pool), atol=0.05)


def test_random_sets_of_two_anchors_are_independent():
    """Anchors with the same pool draw their random negatives independently: their sets
    overlap by k^2 / pool slots on average (hypergeometric), not more."""
    sims, positives, negatives = _random_bank_state()
    pool = np.broadcast_to(negatives[:1], negatives.shape)  # every anchor: anchor 0's pool
    config = ContrastConfig(num_positives=3, num_negatives=5, negative_sampling="random")
    select = jax.jit(
        lambda key: select_slots(
            jnp.asarray(sims), jnp.asarray(positives), jnp.asarray(pool), key, config
        )[1][0]
    )
    overlaps = [
        len(set(chosen[0]) & set(chosen[1]))
        for chosen in (np.asarray(select(k)) for k in jax.random.split(jax.random.key(3), 1000))
    ]
    np.testing.assert_allclose(np.mean(overlaps), 25 / pool[0].sum(), atol=0.08)


_draw = jax.jit(loss_module._random_select, static_argnums=(2, 3))


def _draw_with_window(pools, key, k, window):
    """_random_select's sets with the given candidate window (the whole range if larger)."""
    return np.asarray(_draw(pools, key, k, window)[0])


@pytest.mark.parametrize("share", [0.9, 0.004])
def test_random_draws_from_the_window_equal_those_from_the_whole_bank(share):
    """20,000 slots, so candidates come from a 4,096-slot window of a 32,768 range. A pool
    of 90% of the bank fills the window; one of 0.4% (80 slots) does not and takes the whole
    range: either way the sets are the ones a read of the whole range gives."""
    rng = np.random.default_rng(5)
    pools = jnp.asarray(rng.uniform(size=(4, 20000)) < share)
    key = jax.random.key(7)
    windowed = _draw_with_window(pools, key, 64, window=4096)
    whole = _draw_with_window(pools, key, 64, window=1 << 15)
    np.testing.assert_array_equal(windowed, whole)
    for row, chosen in zip(np.asarray(pools), windowed, strict=True):
        assert len(set(chosen)) == 64 and row[chosen].all()


def test_random_draws_over_a_large_bank_are_uniform():
    """Slot shares over blocks of 250 slots of a 5,000-slot pool (90% of the bank), 400
    draws of 64: each block gets its share of the draws, within 12%."""
    rng = np.random.default_rng(6)
    pool = rng.uniform(size=5000) < 0.9
    pools = jnp.asarray(np.broadcast_to(pool, (8, 5000)))
    counts = np.zeros(5000)
    for key in jax.random.split(jax.random.key(8), 50):
        chosen = _draw_with_window(pools, key, 64, window=4096)
        counts += np.bincount(chosen.ravel(), minlength=5000)
    assert counts[~pool].sum() == 0
    expected = pool.reshape(20, 250).sum(1) / pool.sum() * counts.sum()
    np.testing.assert_allclose(counts.reshape(20, 250).sum(1), expected, rtol=0.12)


def test_info_nce_equals_the_explicit_row_loop():
    rng = np.random.default_rng(4)
    sims = rng.uniform(-1, 1, size=(2, 30)).astype(np.float32)
    pos_sets = [rng.choice(30, (2, 3)), rng.choice(30, (2, 3))]
    neg_sets = [rng.choice(30, (2, 5)), rng.choice(30, (2, 5))]
    got = info_nce(
        jnp.asarray(sims),
        [jnp.asarray(p) for p in pos_sets],
        [jnp.asarray(n) for n in neg_sets],
        0.5,
    )
    for i in range(2):
        rows = []
        for pos in pos_sets:
            for neg in neg_sets:  # official order is irrelevant for the mean
                for p in pos[i]:
                    logits = np.concatenate([[sims[i, p]], sims[i, neg[i]]]) / 0.5
                    rows.append(np.logaddexp.reduce(logits.astype(np.float64)) - logits[0])
        np.testing.assert_allclose(float(got[i]), np.mean(rows), rtol=1e-5)


def test_a_bank_smaller_than_the_sample_counts_is_refused_clearly():
    bank = create_bank(np.arange(100) % 5, 8)
    feats = jnp.ones((2, 8))
    with pytest.raises(ValueError, match="100 slots .* 512 negatives .* csre.num_negatives"):
        bank_loss(feats, jnp.array([0, 1]), jnp.array([0, 1]), bank, jax.random.key(0))


def test_selections_compile_to_top_k_not_to_full_sorts():
    """XLA:CPU has a fast top-k, but falls back to sorting whole (batch, slots) rows when
    the selection's outputs are sliced; the loss must keep the fast form."""
    rng = np.random.default_rng(0)
    slot_labels = np.arange(2000) % 10
    bank = create_bank(slot_labels, 16)
    bank = write(bank, jnp.arange(2000), normalize(jnp.asarray(rng.normal(size=(2000, 16)))))
    feats = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
    labels = jnp.asarray(slot_labels[:8], jnp.int32)

    def loss(f):
        return bank_loss(
            f, labels, jnp.arange(8), bank, jax.random.key(0), ContrastConfig(64, 256)
        )[0]

    hlo = jax.jit(jax.grad(loss)).lower(feats).compile().as_text()
    assert " sort(" not in hlo
