"""Saving and loading a model π_θ (with its tokenizer and optimizer) as a directory.

A checkpoint is a directory of plain files, readable without this package:

    params.npz      every parameter under its GPT-2 name (``wte.weight``, ``h.0.ln_1.weight``, ...)
    config.json     the GPTConfig
    tokenizer.json  the tokenizer (character, byte or BPE)      (when one was given)
    optimizer.npz   AdamW.state_dict(): moments, step, hyper-parameters   (when one was given)
    state.json      format version, training step, user ``extra`` (JSON), the files present

Nothing is pickled: loading uses ``np.load(..., allow_pickle=False)`` and ``json``.

Saving never leaves a half-written checkpoint at ``path``: everything is written
into a fresh sibling directory, then swapped in with renames

    path -> .<name>.bak      (the previous checkpoint, if any)
    tmp  -> path
    delete .<name>.bak

A crash before the second rename leaves the previous checkpoint intact (at
``path``, or at ``.<name>.bak`` between the two renames, where ``load_checkpoint``
finds it and the next save puts it back first). The temporary directory is named
``.<name>.tmp-<pid>-<random>``: a save killed before its swap leaves one behind, and
the next save of the same path removes it once its process is gone.

A save replaces only what this package wrote: an existing ``path`` must be empty or a
checkpoint whose files are exactly those its ``state.json`` lists. A directory of other
files, or a checkpoint that has gained a file, is refused and left as it is.
"""

import json
import os
import re
import shutil
import tempfile

import numpy as np

from dpo_np import backend, checks
from dpo_np.files import describe_path, process_alive, read_json, require_file
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW
from dpo_np.tokenizer import tokenizer_from_dict

FORMAT_VERSION = 1
PARAMS, CONFIG, TOKENIZER, OPTIMIZER, STATE = ("params.npz", "config.json", "tokenizer.json",
                                               "optimizer.npz", "state.json")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its model."""


def _backup_path(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".bak")


def _is_checkpoint(path):
    return os.path.isfile(os.path.join(path, STATE)) or os.path.isfile(os.path.join(path, PARAMS))


def _listed_files(path):
    """The files a checkpoint's ``state.json`` says this package wrote there, or None if ``path``
    holds no readable state.json of this format."""
    try:
        state = read_json(os.path.join(path, STATE))
    except (OSError, ValueError):
        return None
    files = state.get("files") if isinstance(state, dict) else None
    if state.get("format_version") != FORMAT_VERSION or not isinstance(files, list):
        return None
    return set(files)


def check_replaceable(path):
    """Raise unless a save may replace ``path``: absent, an empty directory, or a checkpoint
    holding exactly the files its state.json lists (nothing a person put there is ever deleted)."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise ValueError(f"{path} is {describe_path(path)}, not a checkpoint directory; refusing to replace it")
    present = set(os.listdir(path))
    if not present:
        return
    listed = _listed_files(path)
    if listed is None:
        raise ValueError(f"{path} is not a checkpoint directory of dpo_np (no state.json of format "
                         f"{FORMAT_VERSION}); refusing to replace it — choose another path")
    foreign = sorted(present - listed)
    if foreign:
        raise ValueError(f"{path} is a checkpoint that has gained files it did not write ({foreign[:5]}); "
                         f"refusing to replace it, which would delete them — move them out first")


def _remove_stale_temporaries(path):
    """Delete ``.<name>.tmp-<pid>-*`` directories of ``path`` left by a save whose process died
    (kill -9 mid-write), if they hold nothing but checkpoint files."""
    parent, name = os.path.dirname(path), os.path.basename(path)
    pattern = re.compile(r"\." + re.escape(name) + r"\.tmp-(\d+)-")
    known = {PARAMS, CONFIG, TOKENIZER, OPTIMIZER, STATE}
    for entry in os.listdir(parent):
        match = pattern.match(entry)
        full = os.path.join(parent, entry)
        if not match or not os.path.isdir(full) or os.path.islink(full) or process_alive(int(match.group(1))):
            continue
        if set(os.listdir(full)) <= known:
            shutil.rmtree(full, ignore_errors=True)


# ---- save ---------------------------------------------------------------------------------

def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:          # not every platform lets a directory be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, model, tokenizer=None, optimizer=None, step=None, extra=None):
    """Write ``model`` (and optionally its tokenizer, optimizer, step and JSON ``extra``) to
    the directory ``path``, atomically replacing any checkpoint already there.

    Refuses to replace a ``path`` that is not ours to replace (see ``check_replaceable``): a
    file, a directory of other files, or a checkpoint that has gained files.
    """
    path = os.path.abspath(os.fspath(path))
    step = checks.integer(step, "step", low=0, optional=True)
    try:
        extra_json = json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"extra must be JSON-serialisable (dicts, lists, str, finite numbers): "
                        f"{err}") from None
    backup = _backup_path(path)
    if not os.path.lexists(path) and os.path.isdir(backup) and _listed_files(backup) is not None:
        os.replace(backup, path)     # an earlier save died between its renames: put the old one back first
    check_replaceable(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(path)

    state = {"format_version": FORMAT_VERSION, "step": step, "extra": extra_json,
             "files": [PARAMS, CONFIG, STATE]}
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-", dir=parent)
    try:
        os.chmod(tmp, 0o755)         # mkdtemp makes 0700; a checkpoint should read like any directory
        params = {k: backend.to_numpy(p) for k, p in model.params.items()}
        _write_npz(os.path.join(tmp, PARAMS), params)
        _write_json(os.path.join(tmp, CONFIG), model.config.to_dict())
        if tokenizer is not None:
            _write_json(os.path.join(tmp, TOKENIZER), tokenizer.to_dict())
            state["files"].append(TOKENIZER)
        if optimizer is not None:
            _write_npz(os.path.join(tmp, OPTIMIZER), optimizer.state_dict())
            state["files"].append(OPTIMIZER)
        _write_json(os.path.join(tmp, STATE), state)      # written last: its presence marks a whole set
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    had_old = os.path.lexists(path)
    try:
        if had_old:
            if os.path.lexists(backup) and _listed_files(backup) is not None:
                shutil.rmtree(backup)  # a stale backup from a save that died after its swap
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException:
        # undo what we can: the previous checkpoint goes back to path, the new files go away
        if had_old and not os.path.lexists(path) and os.path.isdir(backup):
            try:
                os.replace(backup, path)
            except OSError:
                pass                   # left at the backup path, where load_checkpoint finds it
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    if had_old:
        shutil.rmtree(backup, ignore_errors=True)
    return path


# ---- load ---------------------------------------------------------------------------------

def _read_json(path):
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: file is missing")
    try:
        return read_json(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _read_npz(path):
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: file is missing")
    try:
        require_file(path, "array file")
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as err:   # bad zip, truncated array, object arrays
        raise CheckpointError(f"{path}: not a readable .npz archive of plain arrays ({err})") from err
    except Exception as err:                         # zipfile.BadZipFile and friends
        raise CheckpointError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from err


def load_checkpoint(path, model_class=None):
    """Read a checkpoint directory written by ``save_checkpoint``.

    Returns ``dict(model=model_class, tokenizer=a tokenizer or None, optimizer_state=dict or None,
    step=int or None, extra=..., path=the directory read)``. ``model_class`` (default ``GPT``) is
    built as ``model_class(config, dtype=...)`` and must say which parameters it holds with
    ``model_class.param_shapes(config)`` (a reward model adds its head to the GPT's). Restore the optimizer with
    ``restore_optimizer(ckpt)`` (or ``AdamW(model.params).load_state_dict(ckpt["optimizer_state"])``).
    Every problem raises ``CheckpointError`` (a ``ValueError``) naming the file and what is wrong;
    a missing checkpoint raises ``FileNotFoundError``.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        backup = _backup_path(path)
        if os.path.isdir(backup) and _is_checkpoint(backup):
            path = backup              # a save died between its two renames; the old checkpoint is whole
        else:
            raise FileNotFoundError(f"no checkpoint directory at {path}")
    f = lambda name: os.path.join(path, name)    # noqa: E731

    state = _read_json(f(STATE))
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{f(STATE)}: unsupported format_version {version!r} "
                              f"(this code reads {FORMAT_VERSION})")
    step = state.get("step")
    try:
        step = checks.integer(step, "'step'", low=0, optional=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{f(STATE)}: {err}") from None
    files = state.get("files")
    known = (PARAMS, CONFIG, TOKENIZER, OPTIMIZER, STATE)
    if not isinstance(files, list) or not set(files) <= set(known) or not {PARAMS, CONFIG} <= set(files):
        raise CheckpointError(f"{f(STATE)}: 'files' must list {PARAMS}, {CONFIG} and optionally "
                              f"{TOKENIZER}, {OPTIMIZER}; got {files!r}")
    for name in files:
        if not os.path.lexists(f(name)):
            raise CheckpointError(f"{f(name)}: file is missing (listed in {STATE})")

    cfg = _read_json(f(CONFIG))
    try:
        config = GPTConfig.from_dict(cfg)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{f(CONFIG)}: not a valid GPTConfig ({err})") from err

    model_class = GPT if model_class is None else model_class
    arrays = _read_npz(f(PARAMS))
    expected = model_class.param_shapes(config)
    mismatch = checks.name_mismatch(expected, arrays)
    if mismatch:
        raise CheckpointError(f"{f(PARAMS)}: parameters do not match {CONFIG} ({config}); {mismatch}")
    dtypes = {a.dtype for a in arrays.values()}
    for k, shape in expected.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(shape):
            raise CheckpointError(f"{f(PARAMS)}: parameter {k!r} has shape {tuple(a.shape)}, "
                                  f"but {CONFIG} ({config}) implies {tuple(shape)}")
        if a.dtype.kind != "f":
            raise CheckpointError(f"{f(PARAMS)}: parameter {k!r} has dtype {a.dtype}, expected floating")
        if not np.all(np.isfinite(a)):
            raise CheckpointError(f"{f(PARAMS)}: parameter {k!r} contains NaN or inf")
    if len(dtypes) != 1:
        raise CheckpointError(f"{f(PARAMS)}: parameters mix dtypes {sorted(map(str, dtypes))}")

    model = model_class(config, dtype=dtypes.pop().type)
    for k in expected:
        model.params[k][...] = backend.asarray(arrays[k])          # bit-exact: same dtype

    tokenizer = None
    if TOKENIZER in files:
        try:
            tokenizer = tokenizer_from_dict(_read_json(f(TOKENIZER)))
        except CheckpointError:
            raise
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{f(TOKENIZER)}: {err}") from err
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(f"{f(TOKENIZER)}: tokenizer has {tokenizer.vocab_size} tokens, more than "
                                  f"the model's vocab_size {config.vocab_size} in {CONFIG}")

    optimizer_state = None
    if OPTIMIZER in files:
        optimizer_state = _read_npz(f(OPTIMIZER))
        try:          # prove now that it fits the model, so the error names the file
            AdamW(model.params).load_state_dict(optimizer_state)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{f(OPTIMIZER)}: does not fit the parameters in {PARAMS} ({err})") from err

    return dict(model=model, tokenizer=tokenizer, optimizer_state=optimizer_state, step=step,
                extra=state.get("extra"), path=path)


def restore_optimizer(checkpoint, params=None):
    """An AdamW over ``params`` (default: the loaded model's) in exactly the saved state, so the
    next ``step`` gives the update the saved run would have given."""
    if checkpoint.get("optimizer_state") is None:
        raise ValueError("checkpoint has no optimizer state (it was saved without optimizer=...)")
    opt = AdamW(checkpoint["model"].params if params is None else params)
    opt.load_state_dict(checkpoint["optimizer_state"])
    return opt
