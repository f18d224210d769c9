"""L-BFGS on the device: float32 history, box bounds kept by projection, one evaluation per call.

scipy's L-BFGS-B works on the host in float64, so every evaluation copies the image and its gradient
off the device and back. Here the whole state (point, gradient, direction, line-search bracket, the
last `history` correction pairs) lives in tf.Variables and `step()` is one compiled function: it
evaluates the loss and gradient at the next trial point of a strong Wolfe line search (bracketing
and cubic zoom, Nocedal & Wright's algorithms 3.5 and 3.6) along the projected path x -> P(x + a d),
and either accepts the point (new correction pair, new two-loop direction) or picks the next trial.
Only the loss value, its auxiliary terms and a small event code come back to the host.

Along the projected path the slopes are taken along the step actually made, s = P(x + a d) - x:
sufficient decrease f <= f(x) + c1 g(x)'s and curvature |g's| <= c2 |g(x)'s|, g at the trial. That
gives s'y >= (1 - c2) |g(x)'s| > 0, so an accepted pair keeps the Hessian estimate positive definite;
a pair is stored only when s'y is above rounding (as scipy's L-BFGS-B tests it).

The initial inverse Hessian estimate is gamma M, with gamma = s'y / y'My of the newest pair (Nocedal &
Wright's scaling); without history (the first step, and after a stall) the step is along -M g.
M = R F R: F the identity or, for an image, a weighting of its spatial frequencies
(`frequency_weights`), and R the identity or a diagonal that lets each value with a small running
mean square gradient move further (`scaling`; RMSprop's mean square, to a gentler power).
"""
import numpy as np

from quiet_tf import tf

REJECTED, ACCEPTED, STALLED = 0, 1, 2  # what step() did with its trial point
MAX_TRIALS = 20  # line-search trials along one direction before it accepts its best or stalls
EPSILON = 1.1920929e-07  # float32's machine epsilon: a smaller s'y is rounding, not curvature


def loss_scale(gradient):
    """The factor both L-BFGS implementations multiply the loss by, from its first gradient.

    Their first step is -gradient itself (scipy's L-BFGS-B with bounds; lbfgs.py's is -M gradient,
    M >= I): where that moves no pixel by a grey level (the authors' means with small weights: 1e-8
    a pixel) the line search starts far too short. Scaled, the steepest pixel moves by at least one
    level (the same minimum); a loss of ordinary scale is left as it is."""
    return tf.maximum(1.0, 1.0 / tf.maximum(tf.reduce_max(tf.abs(gradient)), 1e-30))


def frequency_weights(shape, wavelength=5.0, longest=256):
    """The spectrum of M for an image of `shape` [1, H, W, C] (see `weigh`): each spatial frequency f
    (cycles a pixel) weighted by 1 + 1 / (wavelength |f|), |f| taken as at least 1/longest (and the
    image's lowest, 1/max(H, W)): at most 1 + longest / wavelength.

    As L-BFGS's initial matrix it lets a step move waves longer than `wavelength` pixels further than
    the identity would, in proportion to their length. M is symmetric positive definite: a circulant
    (periodic) filter with a real, positive, even spectrum. To `fast`'s time-to-quality target, 5
    pixels took about a tenth fewer full-size evaluations (193-209 against 215-231 at 256 px, 257
    against 298 at 512 px); 2, 10, 20 and 100 pixels did no better than the identity, and the weight
    squared no better or worse. Uncapped, the longest waves of a 1024 px image got 206 times the step
    and its colours washed out; capped at 256 px they stay (docs/speed.md)."""
    height, width = shape[1], shape[2]
    fy = np.minimum(np.arange(height), height - np.arange(height)) / height
    fx = np.arange(width // 2 + 1) / width
    f = np.maximum(np.hypot(fy[:, np.newaxis], fx[np.newaxis, :]), 1.0 / min(max(height, width), longest))
    return tf.constant((1.0 + 1.0 / (wavelength * f)).astype(np.complex64))


def weigh(q, weights, root=None):
    """M q = R F R q: F the frequency weighting of an image q [1, H, W, C] by the spectrum `weights`,
    R the diagonal `root` (q's shape); either None: the identity. Tensors, not closures, so that a
    compiled function that takes them is traced once per shape."""
    if root is not None:
        q = root * q
    if weights is not None:
        height, width = q.shape[1], q.shape[2]
        channels_first = tf.transpose(q[0], [2, 0, 1])
        weighted = tf.signal.irfft2d(tf.signal.rfft2d(channels_first) * weights, fft_length=[height, width])
        q = tf.transpose(weighted, [1, 2, 0])[tf.newaxis]
    return q if root is None else root * q


@tf.function(jit_compile=True)
def _two_loop(s, y, rho, scale, head, q, weights, root):
    """H q for the L-BFGS inverse Hessian estimate of the pairs (s[i], y[i], rho[i]), newest at
    head - 1, its initial matrix `scale` times M (`weigh` with `weights` and `root`), by the two-loop
    recursion.
    XLA fuses its image-sized operations and reads the pairs in place."""
    history = s.shape[0]
    newest = [(head - 1 - i) % history for i in range(history)]
    alphas = []
    for i in newest:
        a = tf.gather(rho, i) * tf.reduce_sum(tf.gather(s, i) * q)
        q = q - a * tf.gather(y, i)
        alphas.append(a)
    q = weigh(q, weights, root) * scale
    for i, a in zip(reversed(newest), reversed(alphas)):
        b = tf.gather(rho, i) * tf.reduce_sum(tf.gather(y, i) * q)
        q = q + (a - b) * tf.gather(s, i)
    return q


@tf.function(jit_compile=True)
def _rescaled(mean_square, root, g, started, renew, decay, scaling):
    """(v, R) of LBFGS.rescale, R renewed only where `renew`; neither changes where g's squares
    overflow float32. XLA fuses the image-sized operations: unfused, an evaluation at 512x384 in
    bfloat16 cost 1.049 Adam steps instead of 1.021."""
    square = g * g
    v = tf.where(started, decay * mean_square + (1.0 - decay) * square, square)
    finite = tf.reduce_all(tf.math.is_finite(v))
    floor = tf.maximum(1e-3 * tf.reduce_mean(v), 1e-30)
    renewed = ((tf.reduce_max(v) + floor) / (v + floor)) ** (scaling / 4.0)
    return tf.where(finite, v, mean_square), tf.where(finite & renew, renewed, root)


def _assign_if(condition, variable, value):
    """variable.assign(value()) where the scalar `condition` holds. On the CPU a select between two
    image-sized tensors costs four times an addition; a cond costs nothing when it does not hold."""
    def assign():
        variable.assign(value())
        return True
    tf.cond(condition, assign, lambda: False)


def _cubic_minimum(a, fa, da, b, fb, db):
    """The minimiser of the cubic through (a, fa) and (b, fb) with slopes da and db (NaN if none)."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    d2 = tf.sign(b - a) * tf.sqrt(d1 * d1 - da * db)  # NaN where the cubic has no minimum
    return b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)


class LBFGS:
    """Minimise `loss_and_gradient(x) -> (loss, gradient, aux)` over lower <= x <= upper from `start`.

    Each `step()` is one loss-and-gradient evaluation and returns (loss, aux, event), the event being
    REJECTED (a line-search trial that did not satisfy the Wolfe conditions), ACCEPTED, or STALLED
    (the line search found no decrease: the history is dropped and the next direction is -M g). A
    loss or gradient that is not finite counts as an infinite loss. `best` holds the point with the
    lowest finite loss evaluated so far. The initial matrix M = R F R: F from `weights` (an image's
    `frequency_weights`; None: the identity), R from `scaling` (`rescale`'s power; 0: the identity)
    and `decay`.
    """

    def __init__(self, loss_and_gradient, start, lower, upper, history=10, c1=1e-3, c2=0.9, weights=None,
                 scaling=0.0, decay=0.9):
        start = tf.convert_to_tensor(start, tf.float32)
        self.weights = weights  # the spectrum of the initial matrix M (an image's); None: the identity
        # M's diagonal R (`rescale`): the running mean square gradient and its weight in each update.
        self.scaling, self.decay = scaling, decay
        self.mean_square = tf.Variable(tf.zeros(start.shape)) if scaling else None
        self.root = tf.Variable(tf.ones(start.shape)) if scaling else None
        self.shape, self.lower, self.upper, self.c1, self.c2 = start.shape, lower, upper, c1, c2
        self.evaluate = loss_and_gradient
        x = tf.clip_by_value(start, lower, upper)
        zeros = tf.zeros_like(x)
        self.x, self.g, self.d, self.trial = (tf.Variable(v) for v in (x, zeros, zeros, x))
        self.low_x, self.low_g = tf.Variable(x), tf.Variable(zeros)  # the bracket's low end
        self.best = tf.Variable(x)
        self.f = tf.Variable(float("inf"))  # the first trial (x itself, step 0) is always accepted
        self.best_f = tf.Variable(float("inf"))
        self.alpha = tf.Variable(0.0)
        # The bracket (step, loss, slope along the path) at its low end (the best step satisfying
        # sufficient decrease so far, 0 at first) and its high end, once a minimum lies between.
        self.low = tf.Variable([0.0, 0.0, 0.0])
        self.high = tf.Variable([0.0, 0.0, 0.0])
        self.bracketed = tf.Variable(False)
        self.gamma = tf.Variable(0.0)  # s'y / y'My of the last pair: the scale of the initial matrix
        self.trials = tf.Variable(0)
        self.s = tf.Variable(tf.zeros((history,) + tuple(self.shape)))
        self.y = tf.Variable(tf.zeros((history,) + tuple(self.shape)))
        self.rho = tf.Variable(tf.zeros(history))  # 0 marks an empty slot: it then contributes nothing
        self.head = tf.Variable(0)  # slot of the next pair
        self.history = history
        self.step = tf.function(self._step, autograph=False)  # control flow is explicit tf.cond

    def _step(self):
        """One evaluation; its outcome is chosen with selects on scalars, so that the graph has one
        branch (a move: accept a point or stall) and traces in seconds."""
        trial = tf.clip_by_value(self.x + self.alpha * self.d, self.lower, self.upper)
        self.trial.assign(trial)
        f, g, aux = self.evaluate(trial)
        g = tf.cast(g, tf.float32)
        f = tf.cast(f, tf.float32)
        f = tf.where(tf.math.is_finite(f) & tf.reduce_all(tf.math.is_finite(g)), f, float("inf"))
        _assign_if(f < self.best_f, self.best, lambda: trial)
        self.best_f.assign(tf.minimum(f, self.best_f))

        # The Wolfe conditions along the step made, s.
        s = trial - self.x
        decrease, slope_s = tf.reduce_sum(self.g * s), tf.reduce_sum(g * s)
        sufficient = f <= self.f + self.c1 * decrease
        wolfe = sufficient & (tf.abs(slope_s) <= self.c2 * tf.abs(decrease)) & (decrease < 0)
        first = ~tf.math.is_finite(self.f)  # the start itself, accepted once finite
        low, high, a = self.low.value(), self.high.value(), self.alpha.value()
        # Out of trials, or no decrease possible along this path: take the low end if it decreased
        # the loss, else stall.
        give_up = ~first & ~wolfe & ((self.trials + 1 >= MAX_TRIALS) | (decrease >= 0))
        take_trial = tf.where(first, tf.math.is_finite(f), wolfe)
        take_low = give_up & (low[0] > 0)
        event = tf.where(take_trial | take_low, ACCEPTED, tf.where(give_up, STALLED, REJECTED))

        # Otherwise narrow the bracket (step, loss, slope along the path per unit of step).
        point = tf.stack([a, f, slope_s / a])
        too_high = ~sufficient | (f >= low[1])
        passed = tf.where(self.bracketed, point[2] * (high[0] - low[0]) >= 0, point[2] >= 0)
        new_high = tf.where(too_high, point, tf.where(passed, low, high))
        # Below a trial that was too high the search goes on along the straight segment to it, as
        # scipy's does: it lies in the box, so the loss along it is smooth and the slope at x is
        # exact, g(x)'s per unit of step (the projected path's clipping made that slope too steep).
        segment_start = tf.stack([0.0, low[1], decrease / a])
        new_low = tf.where(too_high, tf.where(low[0] > 0, low, segment_start), point)
        bracketed = self.bracketed | too_high | passed
        # The next trial: the cubic's minimum inside the bracket, kept off its ends; where this trial
        # was too high, the cubic's or its mean with the quadratic's (from the low end's loss and
        # slope), whichever is nearer the low end (More & Thuente's first case: a step far too long,
        # clipped to the bounds, is cut by more than tenfold at once), and a tenth of the way in
        # where the loss was not finite. Without a bracket yet: further along, up to four times.
        lo, hi = new_low[0], new_high[0]
        width = hi - lo
        cubic = _cubic_minimum(lo, new_low[1], new_low[2], hi, new_high[1], new_high[2])
        curvature = (new_high[1] - new_low[1] - new_low[2] * width) / (width * width)
        quadratic = lo - new_low[2] / (2.0 * curvature)
        cut = tf.where(tf.abs(cubic - lo) < tf.abs(quadratic - lo), cubic, 0.5 * (cubic + quadratic))
        inside = tf.where(too_high, cut, cubic)
        ends = tf.sort(tf.stack([lo + tf.where(too_high, 1e-3, 0.1) * width, hi - 0.1 * width]))
        inside = tf.where(tf.math.is_finite(inside), tf.clip_by_value(inside, ends[0], ends[1]),
                          lo + 0.5 * width)
        inside = tf.where(tf.math.is_finite(new_high[1]), inside, lo + 0.1 * width)
        beyond = _cubic_minimum(low[0], low[1], low[2], a, f, point[2])
        beyond = tf.where(tf.math.is_finite(beyond) & (beyond > a), tf.minimum(beyond, 4.0 * a), 4.0 * a)
        self.alpha.assign(tf.where(first, a, tf.where(bracketed, inside, tf.maximum(beyond, 1.1 * a))))
        moved_to = tf.cond(take_low, self.low_x.read_value, lambda: trial)  # before the low end moves
        moved_g = tf.cond(take_low, self.low_g.read_value, lambda: g)
        moved_f = tf.where(take_low, low[1], f)
        _assign_if(too_high & ~first, self.d, lambda: s / a)
        _assign_if(~too_high, self.low_x, lambda: trial)
        _assign_if(~too_high, self.low_g, lambda: g)
        self.low.assign(new_low)
        self.high.assign(new_high)
        self.bracketed.assign(bracketed)
        self.trials.assign_add(1)
        tf.cond(event != REJECTED, lambda: self._move(moved_to, moved_f, moved_g, event == ACCEPTED),
                lambda: 0)
        return f, aux, event

    def rescale(self, g, renew):
        """M's diagonal from a newly accepted point's gradient g: with v the running mean of g^2 (g^2
        itself at the start, then weighted by 1 - decay, as RMSprop's), renewed where `renew` (at the
        start and with each stored pair, so that gamma is always of the M in use):
        R^2 = ((max v + e) / (v + e))^(scaling / 2),
        e a thousandth of v's mean. So R >= 1 and M = R F R >= I (see loss_scale); at scaling 0.5 a
        value whose gradient has been 4 times smaller than the steepest's moves twice as far.
        Why: L-BFGS's few pairs say little about 150,000 pixels; one scale for all of them moves the
        flat sky as little as the busy houses. Element by element, 0.5 took a tenth fewer full-size
        evaluations to `fast`'s time-to-quality target at 256 px and a fifth fewer at 512 px
        (docs/speed.md); Adam's own power, 1, did no better than 0.5. Each optimiser starts afresh:
        a new scale of coarse to fine, and the float32 hand-over."""
        v, root = _rescaled(self.mean_square, self.root, g, tf.math.is_finite(self.f), renew, self.decay,
                            self.scaling)
        self.mean_square.assign(v)
        self.root.assign(root)
        return 0

    def _move(self, point, f, g, accepted):
        """Accept `point` (its correction pair stored when its curvature is above rounding) or, after a
        stall, stay and drop the history; then the next direction."""
        s, y = point - self.x, g - self.g
        sy = tf.reduce_sum(s * y)
        keep = accepted & tf.math.is_finite(self.f) & (sy > EPSILON * tf.abs(tf.reduce_sum(self.g * s)))
        if self.scaling:  # before the pair is stored: its gamma is of the renewed M
            tf.cond(accepted, lambda: self.rescale(g, keep | ~tf.math.is_finite(self.f)), lambda: 0)

        def store():
            # A scatter, not self.s[head].assign: on the CPU the strided-slice assignment took 5 ms
            # for a 512x384 image, the scatter a copy's 0.2 ms more than the arithmetic.
            slot = self.head[tf.newaxis]
            self.s.scatter_update(tf.IndexedSlices(s[tf.newaxis], slot))
            self.y.scatter_update(tf.IndexedSlices(y[tf.newaxis], slot))
            self.rho[self.head].assign(1.0 / sy)
            self.head.assign((self.head + 1) % self.history)
            self.gamma.assign(sy / tf.reduce_sum(y * weigh(y, self.weights, self.root)))
            return 0
        tf.cond(keep, store, lambda: 0)
        self.rho.assign(tf.where(accepted, self.rho, tf.zeros_like(self.rho)))
        _assign_if(accepted, self.x, lambda: point)
        _assign_if(accepted, self.g, lambda: g)
        self.f.assign(tf.where(accepted, f, self.f))
        self._new_direction()
        return 0

    def _new_direction(self):
        """The two-loop recursion on the free variables' gradient (those at a bound with the
        gradient pushing outwards are held), then the first trial step along it."""
        held = ((self.x <= self.lower) & (self.g > 0)) | ((self.x >= self.upper) & (self.g < 0))
        free = tf.cast(~held, tf.float32)  # a product: cheaper than a select of 0 where held
        free_g = self.g * free
        has_history = tf.reduce_any(self.rho != 0)
        q = _two_loop(self.s, self.y, self.rho, tf.where(has_history, self.gamma, 1.0), self.head, free_g,
                      self.weights, self.root)
        d = -q * free
        descent = tf.reduce_sum(d * free_g) < 0
        # Not a descent direction: forget the history and step along -M g (M positive definite).
        d = tf.cond(descent, lambda: d, lambda: -weigh(free_g, self.weights, self.root) * free)
        self.rho.assign(tf.where(descent, self.rho, tf.zeros_like(self.rho)))
        # The first trial: the full quasi-Newton step; without history, -M gradient (scipy's first
        # step, -gradient, where M is the identity; see loss_scale) or, after a stall, the last known
        # curvature's scale.
        self.alpha.assign(tf.where(descent & has_history, 1.0, tf.where(self.gamma > 0, self.gamma, 1.0)))
        self.d.assign(d)
        leaving = ((self.x <= self.lower) & (d < 0)) | ((self.x >= self.upper) & (d > 0))
        slope = tf.reduce_sum(self.g * d * tf.cast(~leaving, tf.float32))
        self.low.assign(tf.stack([0.0, self.f, slope]))
        self.bracketed.assign(False)
        self.trials.assign(0)
