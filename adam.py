"""Adam, as TF1's AdamOptimizer computes it, for every optimisation here: the image of stylize.py (the
write-up ran TF1's Adam) and the networks of fast_train.py, on one device or on the replicas of a
tf.distribute strategy."""
from quiet_tf import tf


class Adam(tf.Module):
    """Adam on `variables` with TF1's arithmetic: epsilon outside the square root, the bias
    correction folded into the step size. Its moments `m`, `v` (one per variable, of its shape and
    dtype) and step count `iterations` are what tf.train.Checkpoint saves; made in a strategy's
    scope, they are mirrored as the variables are."""

    # `targets`, the variables it steps, are not its own: tf.Module's `variables` leave them out, and
    # they are not tracked (a checkpoint saves them once, under the module that owns them).
    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES | {"targets"}

    def __init__(self, variables, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
        super().__init__()
        object.__setattr__(self, "targets", tuple(variables))
        self.learning_rate, self.beta1, self.beta2, self.epsilon = learning_rate, beta1, beta2, epsilon
        self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.targets]
        self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.targets]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)

    def apply(self, gradients):
        """One step from the variables' gradients, in their order. In the replicas of a strategy the
        replicas' gradients are summed first (so each replica's loss is its share of the total) and
        every replica's copy takes the same step."""
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, list(gradients))
        context.merge_call(self._update, args=(gradients,))

    def _update(self, strategy, gradients):
        # extended.update runs the step on each device's copy: the variables need no aggregation.
        strategy.extended.update(self.iterations, lambda count: count.assign_add(1))
        for variable, gradient, m, v in zip(self.targets, gradients, self.m, self.v):
            strategy.extended.update(variable, self._step, args=(gradient, m, v))

    def _step(self, variable, gradient, m, v):
        t = tf.cast(self.iterations, tf.float32)  # this device's copy, counted above
        m = m.assign(self.beta1 * m + (1.0 - self.beta1) * gradient)
        v = v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(gradient))
        step = self.learning_rate * tf.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t)
        variable.assign_sub(step * m / (tf.sqrt(v) + self.epsilon))
