"""Run reading notebooks top to bottom and store them with their outputs.

    python notebooks/execute.py                      every notebook in this folder
    python notebooks/execute.py 03_reward_models     one (the name with or without .ipynb)

Each notebook runs in a fresh kernel with this folder as its working directory, and is written
back only if every cell ran without an error, so a failed run never replaces a good notebook.
Needs ``pip install -e ".[notebooks]"`` (nbclient, nbformat, ipykernel).
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CELL_TIMEOUT_S = 600


def notebook_paths(names=()):
    """The notebooks named (all of this folder's, in order, when none are)."""
    if not names:
        return sorted(os.path.join(HERE, n) for n in os.listdir(HERE) if n.endswith(".ipynb"))
    paths = [os.path.join(HERE, n if n.endswith(".ipynb") else n + ".ipynb") for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    return paths


def execute(path):
    """The notebook at ``path``, executed in a fresh kernel (nothing is written)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": HERE}}).execute()
    return nb


def main(argv):
    import nbformat

    for path in notebook_paths(argv):
        start = time.perf_counter()
        nb = execute(path)
        tmp = path + ".tmp"
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
        print(f"{os.path.basename(path)}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
