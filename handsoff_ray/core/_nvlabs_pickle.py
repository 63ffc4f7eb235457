"""Read NVlabs stylegan2-ada-pytorch network pickles WITHOUT running any code from them.

An NVlabs `.pkl` is `pickle.dump(dict(G=..., D=..., G_ema=..., ...))` of modules whose classes are
`@persistence.persistent_class`: each module is stored as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = dict(type='class', version=..., module_src=<python source>, class_name=..., state=<__dict__>)`,
and the original loader `exec`s `module_src`. Here a restricted `pickle.Unpickler` resolves only the
globals needed to rebuild tensors and plain containers, and turns every persistent object into an
inert `PersistentRecord(class_name, state)`; `module_src` is dropped unread. Any other global
(`os.system`, `builtins.eval`, a plain `torch.nn` class, ...) is refused before it is called.

    top = load_nvlabs_pickle(open("network.pkl", "rb"), source="network.pkl")
    g = top["G_ema"]                        # PersistentRecord(class_name='Generator', ...)
    g.init_kwargs["img_resolution"], flat_state(g)["mapping.w_avg"]

Used by `handsoff_ray.core.checkpoint`; raises `UnsafePickleError` (a `pickle.UnpicklingError`).
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch

__all__ = ["PersistentRecord", "UnsafePickleError", "load_nvlabs_pickle", "flat_state"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than tensors and module state."""


@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj` would have rebuilt, as data: class name + `__dict__`."""

    class_name: str
    version: Any
    state: dict[str, Any] = field(repr=False)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def child(self, name: str) -> PersistentRecord | None:
        c = self.children.get(name)
        return c if isinstance(c, PersistentRecord) else None


class _EasyDict(dict):
    """Stands in for dnnlib.EasyDict: a dict (with a __dict__ so pickle's BUILD can land)."""


@dataclass
class _DType:
    """Inert stand-in for numpy.dtype while unpickling; resolved only for plain numeric types."""

    spec: str
    byteorder: str = "="

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state is (version, byteorder, subarray, names, fields, elsize, align, flags)
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.spec)
        if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
            raise UnsafePickleError(f"numpy dtype {self.spec!r} is not a plain numeric type")
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _NdArray:
    """Inert stand-in for a pickled numpy array; `value` is filled by pickle's BUILD."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DType)):
            raise UnsafePickleError("unexpected numpy array state in pickle")
        _, shape, dtype, fortran, raw = state
        if not isinstance(raw, bytes):
            raise UnsafePickleError("numpy object arrays are not allowed in NVlabs pickles")
        arr = np.frombuffer(raw, dtype=dtype.resolve())
        self.value = arr.reshape(shape, order="F" if fortran else "C").copy()


def _np_dtype(spec: Any, align: Any = False, copy: Any = True) -> _DType:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy dtype spec must be a string, got {type(spec).__name__}")
    return _DType(spec)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise UnsafePickleError("unexpected numpy scalar in pickle")
    return np.frombuffer(data, dtype=dtype.resolve())[0].item()


def _np_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _NdArray:
    if cls is not _NdArray:
        raise UnsafePickleError("numpy _reconstruct may only build ndarrays")
    return _NdArray()


def _load_storage(data: Any) -> Any:
    """torch.storage._load_from_bytes, but through torch's own weights-only unpickler."""
    if not isinstance(data, bytes):
        raise UnsafePickleError("tensor storage must be raw bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"tensor storage decoded to {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 without hooks or metadata (never needed, never trusted)."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError("tensor must be rebuilt from a typed storage")
    if not (
        isinstance(storage_offset, int)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and all(isinstance(v, int) for v in size + stride)
    ):
        raise UnsafePickleError("malformed tensor description in pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.empty((0,), dtype=storage.dtype)
        return t.set_(storage._untyped_storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter data must be a tensor")
    return data  # a plain tensor is all we read; requires_grad and hooks are dropped


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replaces torch_utils.persistence._reconstruct_persistent_obj: records, never exec's."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("persistent object meta must be dict(type='class', ...)")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafePickleError("persistent object meta lacks class_name / state")
    return PersistentRecord(class_name=class_name, version=meta.get("version"), state=dict(state))


_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NdArray,
    **{(m, "scalar"): _np_scalar for m in _NUMPY},
    **{(m, "_reconstruct"): _np_reconstruct for m in _NUMPY},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        hint = ""
        if module.startswith("dnnlib.tflib"):
            hint = " (this is a TensorFlow StyleGAN pickle: convert it to PyTorch first)"
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}' from {self._source}: NVlabs pickles may "
            f"only reference tensors and module state{hint}"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id in {self._source}: not an NVlabs network pickle")


def load_nvlabs_pickle(file: IO[bytes], *, source: str) -> Any:
    """Unpickle an NVlabs network pickle into dicts, tensors and `PersistentRecord`s."""
    return _RestrictedUnpickler(file, source).load()


def flat_state(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The record tree's `state_dict()`: parameters and persistent buffers, dotted names."""
    out: dict[str, torch.Tensor] = {}
    st = record.state
    skip = set(st.get("_non_persistent_buffers_set") or ())
    entries = list((st.get("_parameters") or {}).items())
    entries += [(k, v) for k, v in (st.get("_buffers") or {}).items() if k not in skip]
    for name, value in entries:
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise UnsafePickleError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    for name, child in (st.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise UnsafePickleError(f"submodule {prefix}{name} is not an NVlabs persistent module")
        out.update(flat_state(child, f"{prefix}{name}."))
    return out
