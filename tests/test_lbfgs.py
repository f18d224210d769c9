"""lbfgs.py against scipy's L-BFGS-B: the same minimum, bounds kept, one evaluation per step."""
import numpy as np
import pytest
import scipy.optimize

import lbfgs
from quiet_tf import tf

RNG = np.random.default_rng(0)
SCALES = RNG.uniform(0.5, 20.0, 50).astype(np.float32)
CENTRE = RNG.uniform(-2.0, 12.0, 50).astype(np.float32)  # some of it outside the bounds 0..10


def quadratic(x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        f = tf.reduce_sum(SCALES * tf.square(x - CENTRE))
    return f, tape.gradient(f, x), tf.zeros(3)


def run_tf(function, start, lower, upper, steps):
    optimizer = lbfgs.LBFGS(function, start, lower, upper)
    trials = []
    for _ in range(steps):
        f, _, event = optimizer.step()
        trials.append(optimizer.trial.numpy().copy())
        if int(event) == lbfgs.STALLED:
            break
    return optimizer, trials


def test_reaches_scipys_minimum_of_a_bounded_quadratic_and_keeps_the_bounds():
    start = np.full(50, 5.0, np.float32)
    optimizer, trials = run_tf(quadratic, start, 0.0, 10.0, 200)
    expected = scipy.optimize.minimize(
        lambda x: (float(np.sum(SCALES * (x - CENTRE) ** 2)), 2 * SCALES * (x - CENTRE)), start.astype(float),
        jac=True, method="L-BFGS-B", bounds=scipy.optimize.Bounds(0.0, 10.0),
        options={"ftol": 1e-12, "gtol": 1e-10}).x
    np.testing.assert_allclose(expected, np.clip(CENTRE, 0, 10), atol=1e-4)  # the true minimum
    # float32 losses: the line search cannot see changes below ~1e-7 of the bounded terms' constant part
    np.testing.assert_allclose(optimizer.best.numpy(), expected, atol=5e-3)
    assert all(t.min() >= 0.0 and t.max() <= 10.0 for t in trials)  # every evaluated point is valid


def test_the_best_point_is_the_lowest_loss_evaluated():
    optimizer, trials = run_tf(quadratic, np.zeros(50, np.float32), 0.0, 10.0, 15)
    losses = [float(quadratic(tf.constant(t))[0]) for t in trials]
    assert float(optimizer.best_f) == pytest.approx(min(losses), rel=1e-5)
    np.testing.assert_allclose(optimizer.best.numpy(), trials[int(np.argmin(losses))])


def test_a_non_finite_loss_shrinks_the_step_instead_of_moving_there():
    def overflowing(x):
        f, g, aux = quadratic(x)
        return tf.where(tf.reduce_max(tf.abs(x - 5.0)) > 3.0, float("inf"), f), g, aux
    optimizer, trials = run_tf(overflowing, np.full(50, 5.0, np.float32), 0.0, 10.0, 100)
    assert np.isfinite(float(optimizer.f))
    assert np.abs(optimizer.x.numpy() - 5.0).max() <= 3.0
    assert float(optimizer.best_f) < float(quadratic(tf.constant(np.full(50, 5.0, np.float32)))[0])
