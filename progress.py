"""Terminal progress and graceful Ctrl-C, shared by the command-line tools.

A long run shows one live line on a terminal (rewritten in place) and keeps a permanent line every
N steps; in a log file (stderr not a terminal) only the permanent lines appear. The first Ctrl-C
asks the run to stop after the current step and save; a second one stops at once.
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
            self.stream.write("\r" + text.ljust(self._width) + ("\n" if keep else ""))
            self._width = 0 if keep else len(text)
        elif keep:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.live and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def eta(start_time, done, total):
    """Elapsed time and estimated time left, from the average pace so far."""
    elapsed = time.perf_counter() - start_time
    left = elapsed / done * (total - done) if done else float("nan")
    return elapsed, left


class StopRequest:
    """Set by the first Ctrl-C (or SIGTERM); the run checks it between steps."""

    def __init__(self):
        self.requested = False

    def __bool__(self):
        return self.requested


@contextmanager
def graceful_interrupt(message="stopping after this step and saving (Ctrl-C again to stop at once)"):
    """Turn the first SIGINT/SIGTERM into a StopRequest; a second SIGINT raises KeyboardInterrupt."""
    request = StopRequest()

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.requested = True
        print(f"\n{message}", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
