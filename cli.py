"""What every command-line program shares: the entry wrapper and the argument validators.

`entry(body)` runs a program's work and turns every fault a user can meet into one line and an exit
status: a UserError (1), Ctrl-C, SIGTERM or SIGHUP before the run's own handler is in place (130),
an OSError such as a full disk (1), running out of memory (1). The validators are argparse types,
so a NaN, an infinity or a negative value is refused while the command line is read, before any
image, network or TensorFlow is loaded.
"""
import argparse
import math
import re
import signal
import sys

from errors import UserError

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def _say(text):
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the terminal is gone (SIGHUP): the exit status still tells
        pass


def _stop_now(signum, frame):
    raise KeyboardInterrupt


def entry(body):
    """Run `body()` (returns the exit status) with one-line endings for every expected fault.

    Until a run installs its own graceful handler (progress.graceful_interrupt), SIGTERM and SIGHUP
    (a closed terminal, a dropped ssh session) end the program as Ctrl-C does: one line, status 130.
    """
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _stop_now)
    except (ValueError, AttributeError):  # not the main thread, or no SIGHUP (Windows)
        pass
    try:
        return body()
    except UserError as error:
        _say(f"error: {error}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return EXIT_INTERRUPTED
    except MemoryError:
        _say("error: out of memory; use a smaller --max-size (or --batch-size), or close other programs")
        return EXIT_ERROR
    except OSError as error:
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        _say(f"error: {error.strerror or error}{where}")
        return EXIT_ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a value refused by a validator below reported as every other user mistake:
    'error: --iterations must be a positive number, not 0', exit status 1."""

    def error(self, message):
        refused = re.fullmatch(r"argument (\S+?)(?:/\S+)?: ((?:must be|'.*' is not) .*)", message)
        if refused:  # entry() prints it
            raise UserError(f"{refused[1]} {refused[2]}")
        super().error(message)


def _number(kind, low=None, high=None, low_open=False, words=""):
    """An argparse type: `kind` (int or float), finite, within [low, high] (or (low, high])."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole number' if kind is int else 'a number'}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number ({words}), not {text}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {words}, not {text}")
        return value
    parse.__name__ = words or kind.__name__  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, words="a positive number")
nonnegative_int = _number(int, 0, words="0 or a positive number")
positive_float = _number(float, 0.0, low_open=True, words="positive")
nonnegative_float = _number(float, 0.0, words="0 or a positive number")
seed = _number(int, 0, 2 ** 32 - 1, words="a whole number from 0 to 4294967295 (leave --seed out "
               "for a random start)")


# This machine's part of a full device name, as TensorFlow prints it: /job:localhost/replica:0/task:0
LOCAL_PREFIX = r"(/job:localhost(/replica:0)?(/task:0)?/)?/?(device:)?"


def device_list(text):
    """--devices: 'gpu:0,gpu:1' -> ['/gpu:0', '/gpu:1'] (an argparse type): each a device type and
    index, with or without TensorFlow's '/' and 'device:' or its full local name
    (/job:localhost/replica:0/task:0/device:GPU:0), none twice. Whether this machine has them is
    checked once TensorFlow has started (fast_train.choose_strategy)."""
    devices = [item.strip() for item in text.split(",")]
    for item in devices:
        if not re.fullmatch(LOCAL_PREFIX + r"(cpu|gpu|tpu):\d+", item, re.IGNORECASE):
            raise argparse.ArgumentTypeError(f"'{item}' is not a device name such as gpu:0, /cpu:0 or "
                                             f"/job:localhost/replica:0/task:0/device:GPU:0 (give them "
                                             f"separated by commas)")
    names = ["/" + re.sub("^" + LOCAL_PREFIX, "", item, flags=re.IGNORECASE).lower() for item in devices]
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"must be devices named once each, not {text}")
    return names


def finite(value, what, low=None, low_open=False):
    """The same check for values that do not come from argparse (settings files, layer weights)."""
    bad = not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low)))
    if bad:
        bound = "" if low is None else (" and positive" if low_open else " and not negative")
        raise UserError(f"{what} must be finite{bound}, not {value:g}")
    return value
