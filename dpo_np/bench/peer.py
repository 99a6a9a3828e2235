"""PyTorch beside ours, run from outside the package: ``bench torch`` and ``bench all``'s "torch".

The peer (``benchmarks/torch_peer.py``, beside the package in a source checkout) imports torch and
transformers, which dpo_np itself never imports; it runs here in a process of its own, on the BLAS
thread count in force in this one, and hands its report back as JSON. Where it cannot run (no
torch or transformers, no source checkout, another array library) the report says why instead.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from dpo_np import backend
from dpo_np.bench import machine

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(PACKAGE), "benchmarks", "torch_peer.py")


def unavailable():
    """None when the peer can run, else why not (a sentence for the report)."""
    if not os.path.isfile(SCRIPT):
        return (f"the PyTorch peer is {SCRIPT}, which comes with a source checkout, not with an installed "
                f"package: the PyTorch columns are skipped")
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: the PyTorch columns are skipped"
    if backend.backend_name() != "numpy":
        return f"the PyTorch peer runs on the CPU; this run's array library is {backend.backend_name()}"
    return None


def bench_torch(quick=False, print_fn=print):
    """The peer's report (``benchmarks/torch_peer.bench_torch``): ours against PyTorch eager and
    ``torch.compile`` on the toy forward+backward and a DPO step; ``{"available": False, "reason"}``
    where it cannot run. ``quick``: tiny shapes, to check the report."""
    reason = unavailable()
    if reason:
        print_fn(f"bench torch: {reason}")
        return {"available": False, "reason": reason}
    threads = machine.blas_threads()["threads"]
    env = dict(os.environ, **({"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
                              if threads else {}))
    # the peer imports this very dpo_np, not another one installed in site-packages
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(PACKAGE), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="dpo_np-torch-") as tmp:
        out = os.path.join(tmp, "torch.json")
        done = subprocess.run([sys.executable, SCRIPT, "--json", out] + (["--quick"] if quick else []), env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the PyTorch peer ({SCRIPT}) failed with exit status {done.returncode}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)
