"""Reading third-party pickles without running their code.

A pickle names Python callables that the reader calls while loading, so an ordinary
`pickle.load` of a downloaded file runs whatever the file asks for. These readers admit only
the few callables that rebuild plain arrays and refuse every other name before anything is
called:

- `load_numpy_pickle`: nested dicts/lists of numpy arrays of numeric dtypes (Flax checkpoints).
- `load_torchscript_tensors`: the tensors of a TorchScript archive (its `data.pkl`), with the
  scripted modules turned into plain nested dicts; the archive's code is never compiled or run.
- `load_torch_checkpoint`: a `torch.save` file (a Lightning checkpoint) with its tensors and
  plain containers rebuilt and every other object replaced by an `InertObject` that only
  records its class name; a request to call a function is refused.
"""

from __future__ import annotations

import builtins
import collections
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


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """A saved `nn.Parameter` as its plain tensor (requires_grad and hooks are not restored)."""
    import torch

    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("refused a parameter that does not hold a tensor")
    return data


def _build_intlist(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise UnsafePickleError("refused an int list holding something else")
    return values


class _TensorArchiveUnpickler(pickle.Unpickler):
    """Reads the storages of a zip archive written by torch (tensor data under `<root>/data/<key>`)."""

    STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                      "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                      "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}
    TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                         ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                         ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, Any] = {}

    def find_tensor_class(self, module: str, name: str) -> Any:
        """The stand-in for a tensor-rebuilding name, or None when `module.name` is not one."""
        if module == "torch" and name in self.STORAGE_DTYPES:
            return name
        return self.TENSOR_REBUILDERS.get((module, name))

    def persistent_load(self, pid: Any) -> Any:
        import torch

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in self.STORAGE_DTYPES):
            raise UnsafePickleError(f"refused persistent reference {pid!r}: only numeric storages are read")
        _, kind, key, _location, numel = pid
        if key not in self.storages:  # tensors that share a storage name it once each
            raw = self.archive.read(f"{self.root}/data/{key}")
            dtype = getattr(torch, self.STORAGE_DTYPES[kind])
            tensor = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if tensor.numel() != numel:
                raise UserError(f"storage {key} holds {tensor.numel()} values, the archive says {numel}")
            self.storages[key] = tensor
        return self.storages[key]


def _single_data_pickle(archive: zipfile.ZipFile, path: str, what: str) -> tuple[str, bytes]:
    names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(names) != 1:
        raise UserError(f"{path} is not a {what} (no single data.pkl inside)")
    return names[0][: -len("/data.pkl")], archive.read(names[0])


class _TorchScriptTensorUnpickler(_TensorArchiveUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return ScriptedModule  # the module's class: its code is not looked up, only its attributes kept
        found = self.find_tensor_class(module, name)
        if found is not None:
            return found
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _build_intlist
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise UnsafePickleError(f"refused to load {module}.{name}: only tensors and module attributes are read")


def load_torchscript_tensors(source: str | Path | bytes, what: str | None = None) -> ScriptedModule:
    """The top module of a TorchScript archive (a path, or its bytes) as nested dicts of attributes and tensors."""
    path = what or ("TorchScript archive" if isinstance(source, bytes) else str(source))
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            root, data = _single_data_pickle(archive, path, "TorchScript archive")
            top = _TorchScriptTensorUnpickler(io.BytesIO(data), archive, root).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a readable TorchScript archive (truncated or corrupt?): {exc}") from None
    if not isinstance(top, ScriptedModule):
        raise UserError(f"{path} does not hold a scripted module")
    return top


# ---------------------------------------------------------------------------------------------
# torch.save checkpoints (Lightning)

class InertObject:
    """Stands for an object of a class the reader does not build: it records the class name, nothing else.

    Constructing it, restoring its state or filling it (a dict or list subclass) runs no code
    named by the file: arguments, state and items are dropped.
    """

    class_name = "?"

    def __new__(cls, *_args: Any, **_kwargs: Any) -> "InertObject":
        return object.__new__(cls)

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __setstate__(self, _state: Any) -> None:
        pass

    def __setitem__(self, _key: Any, _value: Any) -> None:
        pass

    def append(self, _value: Any) -> None:
        pass

    def extend(self, _values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self.class_name}>"


class _RefusedCall:
    """A function named in the file: harmless as a value, refused when the file asks to call it."""

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        raise UnsafePickleError(f"refused to call {self.qualified_name}: calling a function named in the file "
                                f"could run its code; only tensors, plain data and inert objects are read")


# Builtin containers and values, rebuilt for real (building them runs no code from the file).
_PLAIN_BUILTINS = {name: getattr(builtins, name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bool", "bytes", "bytearray",
    "slice")}
# Classes whose names are lower case, kept as inert objects like any other class.
_LOWERCASE_CLASSES = {("torch", "device"), ("torch", "dtype"), ("torch", "Size"), ("numpy", "dtype"),
                      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                      ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
                      ("datetime", "timedelta"), ("datetime", "timezone"), ("collections", "defaultdict"),
                      ("collections", "deque")}


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode`, as protocol-2 pickles use it for bytes; nothing but a latin-1 string is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused _codecs.encode on anything but a latin-1 string")
    return text.encode("latin1")


def _looks_like_a_class(qualified_name: str) -> bool:
    """Python's naming convention: a class name is capitalised (`Namespace`, `_Private`), a function's is not.

    It only decides between an inert object and a refusal; neither runs code from the file.
    """
    return qualified_name.rsplit(".", 1)[-1].lstrip("_")[:1].isupper()


class _CheckpointUnpickler(_TensorArchiveUnpickler):
    def __init__(self, *args: Any):
        super().__init__(*args)
        self.inert_classes: dict[str, type[InertObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self.find_tensor_class(module, name)
        if found is not None:
            return found
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return _PLAIN_BUILTINS[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        qualified = f"{module}.{name}"
        if _looks_like_a_class(name) or (module, name) in _LOWERCASE_CLASSES:
            if qualified not in self.inert_classes:
                self.inert_classes[qualified] = type("InertObject", (InertObject,), {"class_name": qualified})
            return self.inert_classes[qualified]
        return _RefusedCall(qualified)


def load_torch_checkpoint(path: str | Path) -> Any:
    """The contents of a `torch.save` zip file: tensors and plain containers, other objects as `InertObject`s."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a zip-format PyTorch checkpoint (an old torch pickle, or not a checkpoint): "
                        f"re-save it with a current torch, from a source you trust")
    try:
        with zipfile.ZipFile(path) as archive:
            root, data = _single_data_pickle(archive, str(path), "PyTorch checkpoint")
            return _CheckpointUnpickler(io.BytesIO(data), archive, root).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError, TypeError, RuntimeError,
            AttributeError, IndexError) as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {exc}") from None
