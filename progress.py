"""Terminal progress and graceful Ctrl-C, shared by the command-line tools.

A long run shows one live tqdm bar with its ETA on a terminal and keeps a permanent line every N
steps; in a log file (stderr not a terminal) only the permanent lines appear. The first Ctrl-C
(or SIGTERM, or SIGHUP when the terminal closes)
asks the run to stop after the current step and save; a second one stops the step at once and still
saves.
"""
import signal
import sys
import time
from contextlib import contextmanager


def duration(seconds):
    """3h02m, 4m05s, 12.3s: short enough for a status line."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# tqdm's format with its elapsed<remaining left out: its remaining assumes steps of one cost, and the
# postfix begins with ours (Bar.update's `done`). Without a total tqdm's own format stays.
_WITH_OUR_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{rate_fmt}{postfix}]"


class Bar:
    """The one progress display: on a terminal a live tqdm bar with its ETA; in a log (stream not a
    terminal) the bar is off and only the kept lines appear, each ending with the time elapsed and
    the ETA. The pace is measured from the first update, so a first step that also compiles does not
    skew it."""

    def __init__(self, total=None, description="", unit="it", stream=None, initial=0):
        from tqdm import tqdm  # imported here: --help must not pay for it
        self.stream = stream or sys.stderr
        self.total, self.n, self.done = total, initial, None
        self.live = _is_terminal(self.stream)
        self._bar = tqdm(total=total, initial=initial, desc=description or None, unit=unit,
                         file=self.stream, disable=not self.live, leave=True, dynamic_ncols=True,
                         mininterval=0.1, bar_format=_WITH_OUR_ETA if total else None)
        self._first = None  # (clock, share done) at the first update

    def update(self, n, text="", keep=False, total=None, done=None):
        """Move to `n` of `total` (which a caller may learn only now); `text` is the bar's postfix
        and, when `keep`, a permanent line. `done`, the share of the work done, times the ETA where
        steps differ in cost (coarse to fine: a scale's iterations cost as its pixels); by default
        it is n / total."""
        if total is not None and total != self.total:
            self.total = self._bar.total = total
            self._bar.bar_format = _WITH_OUR_ETA
        self.n, self.done = n, done
        if self._first is None:
            self._first = (time.perf_counter(), self._share())
        if self.live:
            postfix = f"{self.timing()}  {text}" if self.total else text  # first: a narrow terminal cuts the end
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n - self._bar.n)
        if keep:
            self.keep(f"{text}  {self.timing()}")

    def report(self, n, total, text, keep=False):
        """The callback that fast_train, digits and fast_apply call; a count that goes back starts
        a new pass (the digits study's next run), timed afresh."""
        if n < self.n:
            self._first = None
            if self.live:
                self._bar.reset(total)
        self.update(n, text, keep, total)

    def timing(self):
        """'12.3s elapsed, ETA 4m05s', from the average pace since the first update."""
        if self._first is None:
            return f"{duration(0)} elapsed, ETA ?"
        clock, first = self._first
        elapsed = time.perf_counter() - clock
        share = self._share()
        progressed = share - first
        left = elapsed / progressed * (1.0 - share) if progressed > 0 else float("nan")
        return f"{duration(elapsed)} elapsed, ETA {duration(left)}"

    def _share(self):
        if self.done is not None:
            return self.done
        return self.n / self.total if self.total else float("nan")

    def keep(self, text):
        """A permanent line: above the live bar on a terminal, a line of its own in a log."""
        try:
            if self.live:
                self._bar.write(text, file=self.stream)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        except (OSError, ValueError):  # the terminal closed: progress is dropped, not fatal
            self.live, self.stream = False, _Nowhere()

    def close(self):
        try:
            self._bar.close()
        except (OSError, ValueError):
            pass


class _Nowhere:
    def write(self, text):
        pass

    def flush(self):
        pass


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def eta(start_time, done, total):
    """Elapsed time and estimated time left, from the average pace so far (the studio's numbers)."""
    elapsed = time.perf_counter() - start_time
    left = elapsed / done * (total - done) if done else float("nan")
    return elapsed, left


class StopRequest:
    """Set by the first Ctrl-C (or SIGTERM, SIGHUP); the run checks it between steps.

    Once the run has stopped and is saving, `shield()` makes further Ctrl-Cs wait for the save
    instead of cutting it short, so two quick presses still save (the second one's promise)."""

    def __init__(self):
        self.requested = False
        self.shielded = False

    def __bool__(self):
        return self.requested

    def shield(self):
        self.shielded = True

    def should_stop(self):
        """True once a stop was requested; from then on a Ctrl-C no longer cuts the save short."""
        if self.requested:
            self.shield()
        return self.requested


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def graceful_interrupt(message="stopping after this step and saving (Ctrl-C again to stop at once)"):
    """Turn the first SIGINT/SIGTERM/SIGHUP into a StopRequest; a second SIGINT raises
    KeyboardInterrupt (stop the current step at once), unless the run is already saving."""
    request = StopRequest()

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            if request.shielded:
                _say("saving, one moment")
                return
            raise KeyboardInterrupt
        if not request.requested:
            _say(f"\n{message}")
        request.requested = True

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(text):
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no terminal any more (SIGHUP)
        pass
