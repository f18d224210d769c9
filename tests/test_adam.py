"""adam.py: TF1's AdamOptimizer step for step, its state in checkpoints, and replicas that sum their
gradients (a MirroredStrategy over two logical CPUs, in a process of its own)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adam import Adam
from quiet_tf import tf

ROOT = Path(__file__).resolve().parents[1]
GRADIENTS = [np.array([0.3, -1.0]), np.array([0.1, 2.0]), np.array([-0.7, 0.05])]
START3, GRADIENTS3 = [1.0, -2.0, 0.5], [np.array([0.3, -1.0, 0.2]), np.array([0.1, 2.0, -0.4]),
                                        np.array([-0.7, 0.05, 0.3])]


def tf1_adam(gradients, start=(1.0, -2.0), learning_rate=0.5):
    """The variable after tf.compat.v1.train.AdamOptimizer's steps on `gradients`, after each."""
    x = tf.Variable(start)
    reference = tf.compat.v1.train.AdamOptimizer(learning_rate)
    after = []
    for g in gradients:
        reference.apply_gradients([(tf.constant(g, tf.float32), x)])
        after.append(x.numpy().copy())
    return after


def test_adam_follows_tf1_arithmetic():
    x = tf.Variable([1.0, -2.0])
    adam = Adam([x], learning_rate=0.5)
    m = v = np.zeros(2)
    expected = np.array([1.0, -2.0])
    reference = tf1_adam(GRADIENTS[:2])
    for t, g in enumerate(GRADIENTS[:2], start=1):
        adam.apply([tf.constant(g, tf.float32)])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expected = expected - 0.5 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(x.numpy(), reference[t - 1], atol=2e-5)  # TF1's own, step for step
    np.testing.assert_allclose(x.numpy(), expected, atol=2e-5)


def test_a_checkpoint_holds_the_moments_and_count_and_resumes_them(tmp_path):
    x = tf.Variable([1.0, -2.0])
    adam = Adam([x], learning_rate=0.5)
    for g in GRADIENTS[:2]:
        adam.apply([tf.constant(g, tf.float32)])
    path = tf.train.Checkpoint(x=x, optimizer=adam).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert saved == {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
                     "x/.ATTRIBUTES/VARIABLE_VALUE", "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
                     "optimizer/m/0/.ATTRIBUTES/VARIABLE_VALUE", "optimizer/v/0/.ATTRIBUTES/VARIABLE_VALUE"}
    y = tf.Variable([0.0, 0.0])
    resumed = Adam([y], learning_rate=0.5)
    tf.train.Checkpoint(x=y, optimizer=resumed).restore(path).assert_existing_objects_matched()
    assert int(resumed.iterations) == 2
    resumed.apply([tf.constant(GRADIENTS[2], tf.float32)])
    np.testing.assert_allclose(y.numpy(), tf1_adam(GRADIENTS)[-1], atol=2e-5)


@pytest.mark.slow
def test_replicas_sum_their_gradients_and_take_the_same_step():
    """Each replica has its own gradient; the signs of the two differ, so a replica that stepped
    on its own would end elsewhere. (Three values: no shape is the number of replicas.)"""
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from quiet_tf import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from adam import Adam
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    x = tf.Variable({START3!r})
    adam = Adam([x], 0.5)

@tf.function
def step(first, second):
    def replica():
        mine = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        adam.apply([tf.where(mine, first, second)])
    strategy.run(replica)

for first, second in {[(g.tolist(), (-2 * g).tolist()) for g in GRADIENTS3]!r}:
    step(tf.constant(first), tf.constant(second))
print(json.dumps({{"x": [c.numpy().tolist() for c in x.values],
                  "iterations": [int(c.numpy()) for c in adam.iterations.values]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    replicas = json.loads(result.stdout.splitlines()[-1])
    assert replicas["iterations"] == [3, 3]
    summed = tf1_adam([g + -2 * g for g in GRADIENTS3], START3)[-1]
    for copy in replicas["x"]:
        np.testing.assert_allclose(copy, summed, atol=2e-5)
    assert np.abs(summed - tf1_adam(GRADIENTS3, START3)[-1]).min() > 0.3  # the first replica's alone
