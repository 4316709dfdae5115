"""Reading third-party pickles without running their code.

A pickle names Python callables that the reader calls while loading, so an ordinary
`pickle.load` of a downloaded file runs whatever the file asks for. These readers admit only
the few callables that rebuild plain arrays and refuse every other name before anything is
called:

- `load_numpy_pickle`: nested dicts/lists of numpy arrays of numeric dtypes (Flax checkpoints).
- `load_torchscript_tensors`: the tensors of a TorchScript archive (its `data.pkl`), with the
  scripted modules turned into plain nested dicts; the archive's code is never compiled or run.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mvq.errors import UserError


class UnsafePickleError(UserError):
    """A pickle asked for something other than plain arrays; it was not loaded."""


def _checked_dtype(*args: Any) -> np.dtype:
    """numpy.dtype, limited to plain numeric types (an object dtype would unpickle arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise UnsafePickleError(f"refused numpy dtype {dtype!r}: only plain numeric arrays are read")
    return dtype


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _checked_dtype
        raise UnsafePickleError(f"refused to load {module}.{name}: this file may only hold numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent reference: this file may only hold numpy arrays")


def load_numpy_pickle(data: bytes, what: str = "pickle") -> Any:
    """Unpickle `data`, admitting numpy arrays of numeric dtypes inside dicts/lists/tuples, nothing else."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{what} is not a readable array pickle (truncated or corrupt?): {exc}") from None


# ---------------------------------------------------------------------------------------------
# TorchScript archives

class ScriptedModule(dict):
    """A scripted module's attributes (sub-modules, tensors, plain values) as a dict; no code."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError("refused a scripted module whose state is not a dict")
        self.update(state)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> Any:
    import torch

    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError("refused a tensor that is not backed by one of the archive's storages")
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def _build_intlist(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise UnsafePickleError("refused an int list holding something else")
    return values


class _TorchScriptTensorUnpickler(pickle.Unpickler):
    _STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                       "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32"}

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return ScriptedModule  # the module's class: its code is not looked up, only its attributes kept
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _build_intlist
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in self._STORAGE_DTYPES:
            return name
        raise UnsafePickleError(f"refused to load {module}.{name}: only tensors and module attributes are read")

    def persistent_load(self, pid: Any) -> Any:
        import torch

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in self._STORAGE_DTYPES):
            raise UnsafePickleError(f"refused persistent reference {pid!r}: only numeric storages are read")
        _, kind, key, _location, numel = pid
        raw = self.archive.read(f"{self.root}/data/{key}")
        dtype = getattr(torch, self._STORAGE_DTYPES[kind])
        tensor = torch.frombuffer(bytearray(raw), dtype=dtype)
        if tensor.numel() != numel:
            raise UserError(f"storage {key} holds {tensor.numel()} values, the archive says {numel}")
        return tensor


def load_torchscript_tensors(source: str | Path | bytes, what: str | None = None) -> ScriptedModule:
    """The top module of a TorchScript archive (a path, or its bytes) as nested dicts of attributes and tensors."""
    path = what or ("TorchScript archive" if isinstance(source, bytes) else str(source))
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(names) != 1:
                raise UserError(f"{path} is not a TorchScript archive (no single data.pkl inside)")
            root = names[0][: -len("/data.pkl")]
            top = _TorchScriptTensorUnpickler(io.BytesIO(archive.read(names[0])), archive, root).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a readable TorchScript archive (truncated or corrupt?): {exc}") from None
    if not isinstance(top, ScriptedModule):
        raise UserError(f"{path} does not hold a scripted module")
    return top
