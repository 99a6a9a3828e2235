"""Checkpoints: a save/load round trip is bit-exact and resumes training exactly; an
interrupted save never destroys the previous checkpoint; a corrupt or mismatched one is
refused with an error naming the file and the fault."""

import json
import os

import numpy as np
import pytest

from dpo_np import checkpoint as ckpt_mod
from dpo_np.checkpoint import CheckpointError, load_checkpoint, restore_optimizer, save_checkpoint
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW
from dpo_np.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.from_corpus(["the cat sat", "on the mat."])
CONFIG = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16)


def _random_grads(params, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=p.shape).astype(p.dtype) for k, p in params.items()}


def _trained(dtype=np.float32, seed=0, steps=2):
    """A model whose params are not its initialisation, with an optimizer that has state."""
    model = GPT(CONFIG, seed=seed, dtype=dtype)
    opt = AdamW(model.params, lr=1e-2)
    for s in range(steps):
        opt.step(_random_grads(model.params, 100 * seed + s))
    return model, opt


def _same_params(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def _leftovers(parent, keep):
    return sorted(p for p in os.listdir(parent) if p != keep)


# ---- round trip -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact_and_keeps_tokenizer_step_and_extra(tmp_path, dtype):
    model, opt = _trained(dtype)
    path = tmp_path / "ck"
    save_checkpoint(path, model, tokenizer=TOKENIZER, optimizer=opt, step=42,
                    extra={"lr": 1e-2, "note": "héllo", "losses": [0.69, 0.5]})
    ck = load_checkpoint(path)
    assert _same_params(ck["model"].params, model.params)
    assert ck["model"].config == CONFIG
    assert ck["tokenizer"] == TOKENIZER
    assert ck["step"] == 42 and ck["extra"] == {"lr": 1e-2, "note": "héllo", "losses": [0.69, 0.5]}
    idx = np.array([TOKENIZER.encode("the cat")])
    assert np.array_equal(ck["model"].forward(idx, cache=False), model.forward(idx, cache=False))


def test_directory_holds_plain_files_readable_without_pickle(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path / "ck", model, tokenizer=TOKENIZER, optimizer=opt, step=1)
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "optimizer.npz", "params.npz",
                                                   "state.json", "tokenizer.json"]
    with np.load(tmp_path / "ck" / "params.npz", allow_pickle=False) as z:
        assert set(z.files) == set(model.params) and "h.1.attn.c_attn.weight" in z.files
    assert json.loads((tmp_path / "ck" / "config.json").read_text()) == CONFIG.to_dict()
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["format_version"] == ckpt_mod.FORMAT_VERSION and state["step"] == 1
    assert _leftovers(tmp_path, "ck") == []


def test_restored_optimizer_gives_exactly_the_updates_of_the_uninterrupted_run(tmp_path):
    model, opt = _trained(steps=3)
    save_checkpoint(tmp_path / "ck", model, optimizer=opt, step=3)
    ck = load_checkpoint(tmp_path / "ck")
    opt2 = restore_optimizer(ck)
    assert opt2.t == 3
    for s in range(3, 6):
        g = _random_grads(model.params, s)
        opt.step(g)
        opt2.step({k: v.copy() for k, v in g.items()})
    assert _same_params(ck["model"].params, model.params)


def test_checkpoint_without_tokenizer_or_optimizer(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path / "ck", model)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck["tokenizer"] is None and ck["optimizer_state"] is None and ck["step"] is None
    assert _same_params(ck["model"].params, model.params)
    with pytest.raises(ValueError, match="no optimizer state"):
        restore_optimizer(ck)


def test_saving_again_replaces_the_checkpoint_and_leaves_nothing_beside_it(tmp_path):
    a, _ = _trained(seed=1)
    b, _ = _trained(seed=2)
    save_checkpoint(tmp_path / "ck", a, step=1)
    save_checkpoint(tmp_path / "ck", b, step=2)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck["step"] == 2 and _same_params(ck["model"].params, b.params)
    assert _leftovers(tmp_path, "ck") == []


# ---- interrupted saves ------------------------------------------------------------------------

def _fail_on_call(monkeypatch, target, name, n):
    """Make ``target.name`` raise on its n-th call (1-based) and every later one."""
    real = getattr(target, name)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) >= n:
            raise OSError(f"simulated crash in {name}")
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, flaky)


def test_exception_mid_write_keeps_the_previous_checkpoint_and_leaves_no_partial_one(tmp_path, monkeypatch):
    old, old_opt = _trained(seed=1)
    new, new_opt = _trained(seed=2)
    save_checkpoint(tmp_path / "ck", old, optimizer=old_opt, step=1)
    _fail_on_call(monkeypatch, ckpt_mod, "_write_npz", 2)     # params.npz written, optimizer.npz dies
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path / "ck", new, optimizer=new_opt, step=2)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path / "ck")
    assert ck["step"] == 1 and _same_params(ck["model"].params, old.params)
    assert _leftovers(tmp_path, "ck") == []


def test_exception_mid_first_save_leaves_no_checkpoint_at_all(tmp_path, monkeypatch):
    model, _ = _trained()
    _fail_on_call(monkeypatch, ckpt_mod, "_write_json", 2)    # config.json written, state.json dies
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, tokenizer=TOKENIZER)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="ck"):
        load_checkpoint(tmp_path / "ck")


def test_failed_swap_is_rolled_back_to_the_previous_checkpoint(tmp_path, monkeypatch):
    old, _ = _trained(seed=1)
    new, _ = _trained(seed=2)
    save_checkpoint(tmp_path / "ck", old, step=1)
    real_replace = os.replace
    calls = []

    def replace(src, dst):          # old -> backup works, new -> path dies, rollback works
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("simulated crash in rename")
        return real_replace(src, dst)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path / "ck", new, step=2)
    monkeypatch.undo()
    assert len(calls) == 3                                    # the third call was the rollback
    ck = load_checkpoint(tmp_path / "ck")
    assert ck["step"] == 1 and _same_params(ck["model"].params, old.params)
    assert _leftovers(tmp_path, "ck") == []


def test_crash_between_the_two_renames_is_recovered_by_load_and_by_the_next_save(tmp_path, monkeypatch):
    old, _ = _trained(seed=1)
    new, _ = _trained(seed=2)
    save_checkpoint(tmp_path / "ck", old, step=1)
    _fail_on_call(monkeypatch, ckpt_mod.os, "replace", 2)     # the rollback dies too: a real crash
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", new, step=2)
    monkeypatch.undo()
    assert not (tmp_path / "ck").exists() and (tmp_path / ".ck.bak").is_dir()
    ck = load_checkpoint(tmp_path / "ck")                     # reads the backup
    assert ck["step"] == 1 and _same_params(ck["model"].params, old.params)
    save_checkpoint(tmp_path / "ck", new, step=2)
    assert load_checkpoint(tmp_path / "ck")["step"] == 2
    assert _leftovers(tmp_path, "ck") == []


def test_crash_after_the_swap_leaves_a_stale_backup_that_the_next_save_removes(tmp_path, monkeypatch):
    a, _ = _trained(seed=1)
    save_checkpoint(tmp_path / "ck", a, step=1)
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", lambda *args, **kwargs: None)   # backup never deleted
    save_checkpoint(tmp_path / "ck", a, step=2)
    monkeypatch.undo()
    assert (tmp_path / ".ck.bak").is_dir()
    assert load_checkpoint(tmp_path / "ck")["step"] == 2      # path, not the stale backup, wins
    save_checkpoint(tmp_path / "ck", a, step=3)
    assert load_checkpoint(tmp_path / "ck")["step"] == 3
    assert _leftovers(tmp_path, "ck") == []


def test_save_refuses_to_replace_something_that_is_not_a_checkpoint(tmp_path):
    model, _ = _trained()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "notes", model)
    (tmp_path / "file.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "file.txt", model)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "file.txt").read_text() == "precious"


def test_a_checkpoint_that_gained_a_file_is_not_replaced_and_the_file_survives(tmp_path):
    model, _ = _trained()
    save_checkpoint(tmp_path / "ck", model, step=1)
    (tmp_path / "ck" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"gained files.*notes.txt"):
        save_checkpoint(tmp_path / "ck", model, step=2)
    assert (tmp_path / "ck" / "notes.txt").read_text() == "precious"
    assert load_checkpoint(tmp_path / "ck")["step"] == 1


def test_an_empty_directory_may_become_a_checkpoint(tmp_path):
    model, _ = _trained()
    (tmp_path / "ck").mkdir()
    save_checkpoint(tmp_path / "ck", model, step=3)
    assert load_checkpoint(tmp_path / "ck")["step"] == 3


def _dead_pid():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_save_killed_mid_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    """A real kill -9 in the middle of writing the files: the previous checkpoint stays whole, and
    the dead process's temporary directory is gone after the next save."""
    import signal
    import subprocess
    import sys
    model, _ = _trained()
    save_checkpoint(tmp_path / "ck", model, step=1)
    script = (f"import os, signal, numpy as np\n"
              f"from dpo_np import checkpoint\n"
              f"from dpo_np.model import GPT, GPTConfig\n"
              f"def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
              f"checkpoint._write_json = die\n"
              f"checkpoint.save_checkpoint({str(tmp_path / 'ck')!r}, GPT(GPTConfig(**{CONFIG.to_dict()!r})), step=2)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert out.returncode == -signal.SIGKILL
    stale = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert len(stale) == 1 and os.listdir(tmp_path / stale[0]) == ["params.npz"]
    assert load_checkpoint(tmp_path / "ck")["step"] == 1            # the old checkpoint is whole
    save_checkpoint(tmp_path / "ck", model, step=3)
    assert _leftovers(tmp_path, "ck") == [] and load_checkpoint(tmp_path / "ck")["step"] == 3


def test_stale_temporaries_are_removed_only_when_dead_and_holding_only_checkpoint_files(tmp_path):
    model, _ = _trained()
    dead = _dead_pid()
    for name, files in ((f".ck.tmp-{dead}-a", ["params.npz"]), (f".ck.tmp-{dead}-b", ["thesis.tex"]),
                        (f".ck.tmp-{os.getpid()}-c", ["params.npz"]), (f".other.tmp-{dead}-d", ["params.npz"])):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("x")
    save_checkpoint(tmp_path / "ck", model)
    assert _leftovers(tmp_path, "ck") == sorted([f".ck.tmp-{dead}-b", f".ck.tmp-{os.getpid()}-c", f".other.tmp-{dead}-d"])


def test_bad_step_or_extra_is_rejected_before_anything_is_written(tmp_path):
    model, _ = _trained()
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "ck", model, extra={"arr": np.zeros(2)})
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(tmp_path / "ck", model, extra={"loss": float("nan")})
    with pytest.raises(TypeError, match="step"):
        save_checkpoint(tmp_path / "ck", model, step=1.5)
    assert os.listdir(tmp_path) == []


# ---- corrupt or mismatched checkpoints --------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model, opt = _trained()
    path = tmp_path / "ck"
    save_checkpoint(path, model, tokenizer=TOKENIZER, optimizer=opt, step=5)
    return path, model


def _rewrite_params(path, edit):
    with np.load(path / "params.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(path / "params.npz", **arrays)


@pytest.mark.parametrize("name", ["params.npz", "config.json", "state.json", "tokenizer.json",
                                  "optimizer.npz"])
def test_missing_file_is_named(saved, name):
    path, _ = saved
    os.remove(path / name)
    with pytest.raises(CheckpointError, match=rf"{name}.*missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["config.json", "state.json", "tokenizer.json"])
def test_bad_json_is_named(saved, name):
    path, _ = saved
    (path / name).write_text('{"truncated": ')
    with pytest.raises(CheckpointError, match=rf"{name}.*not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["params.npz", "optimizer.npz"])
def test_garbage_npz_is_named(saved, name):
    path, _ = saved
    (path / name).write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CheckpointError, match=rf"{name}.*not a readable"):
        load_checkpoint(path)


def test_pickled_object_array_is_refused(saved):
    path, _ = saved
    def edit(arrays):
        arrays["ln_f.bias"] = np.array([{"x": 1}], dtype=object)
    _rewrite_params(path, edit)
    with pytest.raises(CheckpointError, match=r"params\.npz"):
        load_checkpoint(path)


def test_missing_and_extra_parameters_are_named(saved):
    path, _ = saved
    def edit(arrays):
        del arrays["h.1.mlp.c_fc.bias"]
        arrays["lm_head.weight"] = np.zeros((3, 3), np.float32)
    _rewrite_params(path, edit)
    with pytest.raises(CheckpointError, match=r"params\.npz.*missing \['h\.1\.mlp\.c_fc\.bias'\].*"
                                              r"unexpected \['lm_head\.weight'\]"):
        load_checkpoint(path)


def test_wrong_shape_is_named_with_both_shapes(saved):
    path, _ = saved
    def edit(arrays):
        arrays["h.0.attn.c_proj.weight"] = np.zeros((16, 15), np.float32)
    _rewrite_params(path, edit)
    with pytest.raises(CheckpointError,
                       match=r"params\.npz.*'h\.0\.attn\.c_proj\.weight'.*\(16, 15\).*\(16, 16\)"):
        load_checkpoint(path)


def test_config_that_disagrees_with_the_params_is_refused(saved):
    path, _ = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_embd"] = 32
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"params\.npz.*shape.*config\.json"):
        load_checkpoint(path)
    cfg["n_embd"], cfg["n_layer"] = 16, 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"params\.npz.*missing \['h\.2\."):
        load_checkpoint(path)
    cfg["n_layer"], cfg["dropout"] = 2, 0.1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*dropout"):
        load_checkpoint(path)


def test_non_finite_parameter_is_refused(saved):
    path, _ = saved
    def edit(arrays):
        arrays["wpe.weight"][3, 1] = np.inf
    _rewrite_params(path, edit)
    with pytest.raises(CheckpointError, match=r"params\.npz.*'wpe\.weight'.*NaN or inf"):
        load_checkpoint(path)


def test_optimizer_state_for_other_parameters_is_refused(saved):
    path, _ = saved
    with np.load(path / "optimizer.npz", allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    state["exp_avg/wte.weight"] = state["exp_avg/wte.weight"][:-1]
    np.savez(path / "optimizer.npz", **state)
    with pytest.raises(CheckpointError, match=r"optimizer\.npz.*wte\.weight.*shape"):
        load_checkpoint(path)


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(saved):
    path, _ = saved
    big = CharTokenizer.from_corpus("abcdefghijklmnopqrstuvwxyz")
    (path / "tokenizer.json").write_text(json.dumps(big.to_dict()))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*vocab_size"):
        load_checkpoint(path)


def test_unknown_format_version_and_bad_state_are_refused(saved):
    path, _ = saved
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"state\.json.*format_version 99"):
        load_checkpoint(path)
    (path / "state.json").write_text(json.dumps({**state, "files": ["../../etc/passwd"]}))
    with pytest.raises(CheckpointError, match=r"state\.json.*'files'"):
        load_checkpoint(path)
    (path / "state.json").write_text(json.dumps({**state, "step": "five"}))
    with pytest.raises(CheckpointError, match=r"state\.json.*'step'"):
        load_checkpoint(path)


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
