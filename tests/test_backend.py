"""The backend: one place that knows where arrays live."""

import subprocess
import sys

import numpy as np
import pytest

from dpo_np import backend


@pytest.fixture
def restore_backend():
    yield
    backend.set_backend("numpy")


def test_numpy_is_the_default_backend():
    assert backend.xp() is np
    assert backend.backend_name() == "numpy"
    assert backend.default_dtype() is np.float32


def test_asking_for_cupy_without_cupy_names_the_fix(monkeypatch, restore_backend):
    monkeypatch.setitem(sys.modules, "cupy", None)       # makes `import cupy` fail
    with pytest.raises(RuntimeError, match=r'pip install "dpo-np\[gpu\]"'):
        backend.set_backend("cupy")
    assert backend.xp() is np                             # a failed switch changes nothing


def test_cupy_without_a_visible_gpu_is_a_clear_error(monkeypatch, restore_backend):
    class FakeRuntime:
        @staticmethod
        def getDeviceCount():
            return 0

    fake = type(sys)("cupy")
    fake.cuda = type(sys)("cupy.cuda")
    fake.cuda.runtime = FakeRuntime
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        backend.set_backend("cupy")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("torch")


def test_environment_variable_selects_the_backend_at_first_use():
    code = "from dpo_np import backend; print(backend.backend_name())"
    for name in ("numpy", "strict"):
        env_ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={"DPO_NP_BACKEND": name, "PATH": ""})
        assert env_ok.stdout.strip() == name
    env_bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"DPO_NP_BACKEND": "jax", "PATH": ""})
    assert env_bad.returncode != 0 and "backend must be one of" in env_bad.stderr


def test_the_strict_backend_needs_no_gpu_and_loads_numpy_alone():
    code = ("import sys\n"
            "from dpo_np import backend, GPT, GPTConfig\n"
            "xp = backend.set_backend('strict')\n"
            "GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)).forward(xp.zeros((1, 3), int))\n"
            f"print(backend.backend_name(), [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "strict []"


def test_strict_backend_arrays_are_device_arrays_and_numpy_arrays_are_not(restore_backend):
    host = np.arange(3.0)
    assert backend.to_numpy(host) is host and backend.array_module(host) is np
    xp = backend.set_backend("strict")
    device = backend.asarray(host)
    assert isinstance(device, xp.ndarray) and backend.array_module(device) is xp
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(device)
    np.testing.assert_array_equal(backend.to_numpy(device), host)


def test_same_seed_gives_the_same_numbers():
    a = backend.rng(7).standard_normal(5)
    b = backend.rng(7).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        backend.rng(None)


def test_default_dtype_must_be_floating():
    with pytest.raises(ValueError, match="floating"):
        backend.set_default_dtype(np.int32)


def test_scatter_add_accumulates_repeated_indices():
    out = backend.scatter_add(np.zeros(3), np.array([0, 0, 2]), np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(out, [3.0, 0.0, 5.0])


HEAVY = ('matplotlib', 'cupy', 'torch', 'jax', 'scipy', 'tqdm', 'transformers', 'safetensors', 'nbclient')


def test_importing_every_module_of_the_package_loads_nothing_heavy():
    code = ("import importlib, pkgutil, sys, dpo_np\n"
            "names = [m.name for m in pkgutil.walk_packages(dpo_np.__path__, 'dpo_np.')]\n"
            "for name in names:\n"
            "    if not name.endswith('__main__'): importlib.import_module(name)\n"
            f"print(len(names), [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) > 30 and heavy == "[]"          # the subpackages (experiments, bench) included


def test_the_main_public_names_import_from_the_package_and_load_numpy_alone():
    code = ("import sys\n"
            "from dpo_np import GPT, GPTConfig, DPOTrainer, DPOConfig, dpo_loss, get_batch_logps, optimal_policy\n"
            "import dpo_np\n"
            "assert dpo_np.DPOTrainer.__module__ == 'dpo_np.trainers' and dpo_np.GPT.__module__ == 'dpo_np.model'\n"
            "assert all(hasattr(dpo_np, name) for name in dpo_np.__all__)\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
