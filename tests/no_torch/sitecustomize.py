"""Makes ``import torch`` fail in a process that has this folder on PYTHONPATH (tests of the runtime without PyTorch).

Python imports sitecustomize at start-up, before any code of the process runs; the finder put
first on sys.meta_path refuses torch and notes each attempt in $MDFLOW_TEST_TORCH_LOG.
"""
import os
import sys


class _NoTorch:
    """A meta-path finder that refuses torch and its submodules."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            if os.environ.get("MDFLOW_TEST_TORCH_LOG"):
                with open(os.environ["MDFLOW_TEST_TORCH_LOG"], "a") as log:
                    log.write(name + "\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the runtime must not need PyTorch)")
        return None


sys.meta_path.insert(0, _NoTorch())
