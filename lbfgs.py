"""L-BFGS on the device: float32 history, box bounds kept by projection, one evaluation per call.

scipy's L-BFGS-B works on the host in float64, so every evaluation copies the image and its gradient
off the device and back. Here the whole state (point, gradient, direction, the last `history`
correction pairs) lives in tf.Variables and `step()` is one compiled function: it evaluates the loss
and gradient at the next trial point of a backtracking (Armijo) line search along the projected path,
and either accepts the point (new correction pair, new two-loop direction) or shrinks the step. Only
the loss value, its auxiliary terms and a small event code come back to the host.
"""
from quiet_tf import tf

REJECTED, ACCEPTED, STALLED = 0, 1, 2  # what step() did with its trial point
MAX_TRIALS = 20  # line-search trials along one direction before it counts as stalled


class LBFGS:
    """Minimise `loss_and_gradient(x) -> (loss, gradient, aux)` over lower <= x <= upper from `start`.

    Each `step()` is one loss-and-gradient evaluation and returns (loss, aux, event), the event being
    REJECTED (a line-search trial that did not decrease the loss enough), ACCEPTED, or STALLED (the
    line search gave up: the history is dropped and the next direction is steepest descent).
    `best` holds the point with the lowest finite loss evaluated so far.
    """

    def __init__(self, loss_and_gradient, start, lower, upper, history=10, c1=1e-4):
        start = tf.convert_to_tensor(start, tf.float32)
        self.shape, self.lower, self.upper, self.c1 = start.shape, lower, upper, c1
        self.evaluate = loss_and_gradient
        x = tf.clip_by_value(start, lower, upper)
        zeros = tf.zeros_like(x)
        self.x, self.g, self.d, self.trial = (tf.Variable(v) for v in (x, zeros, zeros, x))
        self.best = tf.Variable(x)
        self.f = tf.Variable(float("inf"))  # the first trial (x itself, step 0) is always accepted
        self.best_f = tf.Variable(float("inf"))
        self.alpha = tf.Variable(0.0)
        self.gamma = tf.Variable(0.0)  # s'y / y'y of the last pair: the scale of the initial Hessian
        self.trials = tf.Variable(0)
        self.length = tf.Variable(1.0)  # of a steepest-descent step while no curvature is known
        self.s = tf.Variable(tf.zeros((history,) + tuple(self.shape)))
        self.y = tf.Variable(tf.zeros((history,) + tuple(self.shape)))
        self.rho = tf.Variable(tf.zeros(history))  # 0 marks an empty slot: it then contributes nothing
        self.head = tf.Variable(0)  # slot of the next pair
        self.history = history
        self.step = tf.function(self._step)

    def _step(self):
        trial = tf.clip_by_value(self.x + self.alpha * self.d, self.lower, self.upper)
        self.trial.assign(trial)
        f, g, aux = self.evaluate(trial)
        f = tf.cast(f, tf.float32)
        finite = tf.math.is_finite(f)
        decrease = tf.minimum(tf.reduce_sum(self.g * (trial - self.x)), 0.0)
        accepted = finite & (f <= self.f + self.c1 * decrease)
        better = finite & (f < self.best_f)
        self.best.assign(tf.where(better, trial, self.best))
        self.best_f.assign(tf.where(better, f, self.best_f))
        event = tf.cond(accepted, lambda: self._accept(trial, f, g), lambda: self._backtrack(f))
        return f, aux, event

    def _accept(self, trial, f, g):
        s, y = trial - self.x, g - self.g
        sy, yy = tf.reduce_sum(s * y), tf.reduce_sum(y * y)
        keep = sy > 1e-10 * yy  # curvature positive: a pair that keeps the Hessian estimate positive

        def store():
            self.s[self.head].assign(s)
            self.y[self.head].assign(y)
            self.rho[self.head].assign(1.0 / sy)
            self.head.assign((self.head + 1) % self.history)
            self.gamma.assign(sy / yy)
            return 0
        def expand():  # an Armijo search alone may stop short of positive curvature: go further
            self.length.assign(4.0 * self.length)
            return 0
        tf.cond(keep, store, expand)
        self.x.assign(trial)
        self.f.assign(f)
        self.g.assign(g)
        self._new_direction()
        return tf.constant(ACCEPTED)

    def _backtrack(self, f):
        self.trials.assign_add(1)

        def shrink():
            # Minimum of the quadratic through f(x), its slope along d and f(trial), kept within
            # [0.1, 0.5] of the step; a non-finite loss cuts the step tenfold.
            slope = tf.reduce_sum(self.g * self.d)
            a = self.alpha
            curvature = f - self.f - slope * a
            guess = tf.where(curvature > 0, -slope * a * a / (2.0 * curvature), 0.5 * a)
            self.alpha.assign(tf.where(tf.math.is_finite(f), tf.clip_by_value(guess, 0.1 * a, 0.5 * a),
                                       0.1 * a))
            return tf.constant(REJECTED)

        def stall():
            self.rho.assign(tf.zeros_like(self.rho))
            self._new_direction()
            return tf.constant(STALLED)
        finite_start = tf.math.is_finite(self.f)
        return tf.cond(finite_start & (self.trials >= MAX_TRIALS), stall, shrink)

    def _new_direction(self):
        """The two-loop recursion on the free variables' gradient (those at a bound with the
        gradient pushing outwards are held), then the first trial step along it."""
        held = ((self.x <= self.lower) & (self.g > 0)) | ((self.x >= self.upper) & (self.g < 0))
        q = tf.where(held, 0.0, self.g)
        newest = [(self.head - 1 - i) % self.history for i in range(self.history)]
        alphas = []
        for i in newest:
            a = self.rho[i] * tf.reduce_sum(self.s[i] * q)
            q = q - a * self.y[i]
            alphas.append(a)
        has_history = tf.reduce_any(self.rho != 0)
        q = q * tf.where(has_history, self.gamma, 1.0)
        for i, a in zip(reversed(newest), reversed(alphas)):
            b = self.rho[i] * tf.reduce_sum(self.y[i] * q)
            q = q + (a - b) * self.s[i]
        d = tf.where(held, 0.0, -q)
        free_g = tf.where(held, 0.0, self.g)
        descent = tf.reduce_sum(d * free_g) < 0
        d = tf.where(descent, d, -free_g)  # not a descent direction: forget the history
        self.rho.assign(tf.where(descent, self.rho, tf.zeros_like(self.rho)))
        with_history = descent & has_history
        norm = tf.sqrt(tf.reduce_sum(d * d))
        # Without history the first step is as scipy's (unit length, growing while no curvature is
        # seen), or the last known scale.
        first = tf.where(self.gamma > 0, self.gamma, self.length / tf.maximum(norm, 1e-30))
        self.alpha.assign(tf.where(with_history, 1.0, first))
        self.d.assign(d)
        self.trials.assign(0)
