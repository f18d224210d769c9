"""TensorFlow, imported without its start-up chatter, and only when first used.

TensorFlow's C++ side prints oneDNN/CUDA/absl info lines to stderr while it is imported, before
TF_CPP_MIN_LOG_LEVEL is honoured, so the import runs with stderr pointed at /dev/null. Every module
of the project takes `tf` from here, which makes the order of imports irrelevant. `tf` stands in for
the module until its first attribute is read: the import takes seconds, and `--help` or a mistyped
option must not wait for it (tests/test_quiet_tf.py).
"""
import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow():
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stderr_fd)
    try:
        import tensorflow
    finally:
        os.dup2(saved, stderr_fd)
        os.close(saved)
        os.close(devnull)
    return tensorflow


class _OnFirstUse(types.ModuleType):
    """`tensorflow`, imported (quietly) when an attribute is first read. Then every module's `tf` is
    pointed at the real module: AutoGraph, which converts the code of a tf.function, must see
    TensorFlow itself, not a stand-in."""

    def __getattr__(self, name):
        module = self.__dict__.get("_module")
        if module is None:
            module = self.__dict__["_module"] = _import_tensorflow()
            module.get_logger().setLevel("ERROR")
            for loaded in list(sys.modules.values()):
                if getattr(loaded, "__dict__", {}).get("tf") is self:  # no module __getattr__ runs
                    loaded.tf = module
        return getattr(module, name)


tf = _OnFirstUse("tensorflow")
