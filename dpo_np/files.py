"""Writing files so that a crash never leaves half of one.

Every file dpo_np writes (tokenizers, metric logs, figures) goes through
``atomic_write``: the bytes go to a temporary file in the same directory, are
flushed to disk, and only then replace the target with ``os.replace``, which
is atomic on POSIX and Windows. A reader sees the old file or the new one.
Checkpoints, which are directories, use the same idea in ``checkpoint.py``.
"""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """``with atomic_write(path) as f: ...`` writes ``path`` whole or not at all.

    ``mode`` is "w" (text, UTF-8) or "wb". The parent directory is created if
    needed. On an exception the temporary file is removed and the old ``path``
    (if any) is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)            # mkstemp makes 0600; a saved file should read like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def process_alive(pid):
    """Whether process ``pid`` still runs on this machine (for stale locks and temporaries). When
    it cannot be told (another user's process), it counts as alive: nothing is deleted on a guess."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_json_atomic(path, obj):
    """``json.dump(obj)`` to ``path`` through ``atomic_write``."""
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
