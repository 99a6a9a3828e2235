"""Writing files so that a crash never leaves half of one.

Every file dpo_np writes (tokenizers, metric logs, figures) goes through
``atomic_write``: the bytes go to a temporary file in the same directory, are
flushed to disk, and only then replace the target with ``os.replace``, which
is atomic on POSIX and Windows. A reader sees the old file or the new one.
Checkpoints, which are directories, use the same idea in ``checkpoint.py``.

Reading is checked as strictly: ``read_json``/``loads_json`` refuse an object that names one key
twice (Python's reader keeps the last one silently), and a message says what a path is
(``describe_path``: a directory, a symbolic link, a FIFO), never "a file" or "missing" for
something that is there. ``overlaps`` tells whether an output would land on an input.
"""

import contextlib
import json
import os
import stat
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


# ---- reading, and saying what a path is ----------------------------------------------------

_KINDS = ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def describe_path(path):
    """What is at ``path``, in words: "missing", "a file", "a directory", "a FIFO (named pipe)", ...,
    or for a symbolic link "a symbolic link to a directory (-> target)" / "a broken symbolic link
    (-> target)", so that no message calls a link or a directory "a file"."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return "missing"
    if os.path.islink(path):
        target = os.readlink(path)
        if not os.path.exists(path):
            return f"a broken symbolic link (-> {target})"
        return f"a symbolic link to {_kind(os.stat(path).st_mode)} (-> {target})"
    return _kind(os.lstat(path).st_mode)


def require_file(path, what="file"):
    """Raise unless ``path`` is a regular file (or a link to one): ``FileNotFoundError`` when nothing
    is there, ``ValueError`` saying what is there instead (a directory named config.json is not a
    missing file; a FIFO would block the reader)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        where = "" if not os.path.lexists(path) else f" ({describe_path(path)})"
        raise FileNotFoundError(f"{path}: no such {what}{where}")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is {describe_path(path)}, not a regular file: expected the {what}")


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice (the reader would keep the last value silently)."""


def unique_keys(pairs):
    """``object_pairs_hook`` for ``json``: the object as a dict, or ``DuplicateKeyError`` naming a
    key given twice."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKeyError(f"the key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def loads_json(text):
    """``json.loads`` that refuses repeated keys (``unique_keys``)."""
    return json.loads(text, object_pairs_hook=unique_keys)


def json_error(err):
    """A JSON reader's error in words: "Expecting value at line 1, column 5" (never "at at")."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg.removesuffix(' at')} at line {err.lineno}, column {err.colno}"
    return str(err)


def read_json(path, what="JSON file"):
    """The JSON value in the regular file ``path`` (UTF-8, a BOM allowed), every object's keys
    distinct; a missing file is a ``FileNotFoundError``, anything else wrong a ``ValueError``
    naming the file."""
    require_file(path, what)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return loads_json(f.read())
    except (json.JSONDecodeError, DuplicateKeyError, UnicodeDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else json_error(err)
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({why})") from None


# ---- an output that would land on an input -------------------------------------------------------

def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def overlaps(path, folder):
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved and two hard links
    to one file counted as one: an output there would replace (or write into) the input."""
    path, folder = _real(path), _real(folder)
    if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
        return True
    try:
        return os.path.samefile(path, folder)
    except OSError:
        return False
