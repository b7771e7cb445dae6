"""The NumPy objects that are safe to unpickle: numeric dtypes, scalars and arrays.

Both pickled formats this package reads hold NumPy values: the official MP-MAE
checkpoints (loaded by PyTorch's ``weights_only`` unpickler, see
:func:`~torchgeo_mmearth.models.load_checkpoint`) and the metadata of GEO-Bench
sample files (see :func:`~torchgeo_mmearth.datasets.geobench_metadata.load_metadata`). One
allow-list serves both: numeric kinds only, so object arrays and scalars (which
would rebuild arbitrary objects) stay refused.
"""

import importlib
import pickle
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ['NUMPY_GLOBALS']


def _core(name: str) -> ModuleType:
    try:
        return importlib.import_module(f'numpy._core.{name}')
    except ImportError:  # NumPy 1
        return importlib.import_module(f'numpy.core.{name}')


def _plain_dtype(*args: Any) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError('object dtypes are refused')
    return dtype


def _plain_scalar(dtype: np.dtype[Any], *data: Any) -> Any:
    if np.dtype(dtype).hasobject:
        raise pickle.UnpicklingError('object scalars are refused')
    return _core('multiarray').scalar(dtype, *data)


def _plain_array(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f'array subclass {subtype!r} is refused')
    array: np.ndarray = _core('multiarray')._reconstruct(subtype, shape, dtype)
    return array


def _plain_frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if np.dtype(dtype).hasobject:
        raise pickle.UnpicklingError('object arrays are refused')
    array: np.ndarray = _core('numeric')._frombuffer(buffer, dtype, shape, order)
    return array


def _numpy_globals() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {
        'numpy.dtype': _plain_dtype,
        'numpy.ndarray': np.ndarray,
    }
    # Pickles written by NumPy 1 say numpy.core, by NumPy 2 numpy._core.
    for core in ('numpy.core', 'numpy._core'):
        table[f'{core}.multiarray.scalar'] = _plain_scalar
        table[f'{core}.multiarray._reconstruct'] = _plain_array
        table[f'{core}.numeric._frombuffer'] = _plain_frombuffer
    # dtype instances are rebuilt from their class (numpy.dtypes.Float64DType, ...)
    for code in '?bBhHiIlLqQefdgFDG':
        cls = type(np.dtype(code))
        table[f'{cls.__module__}.{cls.__name__}'] = cls
    return table


#: ``{qualified name in a pickle: what rebuilds it}`` for the NumPy objects that
#: run no code: numeric dtypes, scalars and arrays, under their NumPy 1 and 2
#: names. The rebuilders refuse object dtypes and array subclasses.
NUMPY_GLOBALS: Mapping[str, Callable[..., Any]] = _numpy_globals()
