"""Terminal progress and graceful Ctrl-C, shared by the command-line tools.

A long run shows one live line on a terminal (rewritten in place) and keeps a permanent line every
N steps; in a log file (stderr not a terminal) only the permanent lines appear. The first Ctrl-C
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


class LiveLine:
    """One status line, rewritten in place on a terminal; `keep=True` leaves a permanent copy."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._width = 0

    def show(self, text, keep=False):
        if self.live:
            self._write("\r" + text.ljust(self._width) + ("\n" if keep else ""))
            self._width = 0 if keep else len(text)
        elif keep:
            self._write(text + "\n")

    def close(self):
        if self.live and self._width:
            self._write("\n")
            self._width = 0

    def _write(self, text):
        """A progress line that cannot be shown (the terminal closed) is dropped, not fatal."""
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None


def eta(start_time, done, total):
    """Elapsed time and estimated time left, from the average pace so far."""
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
