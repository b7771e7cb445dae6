"""Safe reading of the metadata pickled into every GEO-Bench sample file.

Each GEO-Bench sample file (https://github.com/ServiceNow/geo-bench) holds its
band descriptions, dates and georeferencing as a pickle that refers to classes of
the ``geobench``, ``affine`` and ``rasterio`` packages. :func:`load_metadata`
rebuilds plain data, NumPy values and dates, and the rest as inert stand-ins
(:class:`GeoBenchMetadata`), so no code from the file runs.
"""

import ast
import datetime
import io
import pickle
import re
from collections import OrderedDict
from typing import Any, ClassVar, Self

from .._pickle import NUMPY_GLOBALS

__all__ = ['GeoBenchMetadata', 'load_metadata']


class GeoBenchMetadata:
    """Inert stand-in for an object pickled in GEO-Bench metadata.

    GEO-Bench classes (``Sentinel2``, ``SegmentationClasses``, ...) and the
    ``affine``/``rasterio`` georeferencing objects are rebuilt as instances of
    subclasses of this class: their pickled state lands in ``__dict__`` (or in
    ``state`` when it is not a dict) and their constructor arguments in ``args``.
    No code from the file runs.
    """

    #: ``'<module>.<name>'`` the object was pickled as.
    pickled_as: ClassVar[str] = ''

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Create an empty stand-in.

        Args:
            *args: constructor arguments in the pickle.
            **kwargs: keyword constructor arguments in the pickle.

        Returns:
            The stand-in.
        """
        instance = super().__new__(cls)
        instance.__dict__['args'] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any constructor arguments (they are kept in ``args``).

        Args:
            *args: constructor arguments.
            **kwargs: keyword constructor arguments.
        """

    def __setstate__(self, state: Any) -> None:
        """Keep the pickled state.

        Args:
            state: a dict of attributes, a ``(dict, slots)`` pair or anything else.
        """
        if isinstance(state, tuple) and len(state) == 2:
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__['state'] = state


_STAND_INS: dict[str, type[GeoBenchMetadata]] = {}
_GEOBENCH_MODULE = re.compile(r'(geobench|ccb)(\.io)?(\.(dataset|label|task))?')
_GEOREFERENCING = {'affine.Affine', 'rasterio.crs.CRS'}
_SAFE = {
    ('datetime', 'date'): datetime.date,
    ('datetime', 'datetime'): datetime.datetime,
    ('datetime', 'time'): datetime.time,
    ('datetime', 'timedelta'): datetime.timedelta,
    ('datetime', 'timezone'): datetime.timezone,
    ('collections', 'OrderedDict'): OrderedDict,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds plain data, NumPy arrays, dates and inert stand-ins; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        qualified = f'{module}.{name}'
        if qualified in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[qualified]
        if key in _SAFE:
            return _SAFE[key]
        if _GEOBENCH_MODULE.fullmatch(module) or qualified in _GEOREFERENCING:
            if qualified not in _STAND_INS:
                _STAND_INS[qualified] = type(
                    name, (GeoBenchMetadata,), {'pickled_as': qualified}
                )
            return _STAND_INS[qualified]
        raise pickle.UnpicklingError(
            f'refusing to unpickle {qualified}, which is not part of the GEO-Bench '
            'sample format'
        )


def load_metadata(attribute: str | bytes) -> Any:
    """Decode the ``pickle`` attribute of a GEO-Bench sample file safely.

    Args:
        attribute: the attribute as h5py returns it: the ``str()`` of the pickled
            bytes (or the bytes).

    Returns:
        The metadata dictionary, with GEO-Bench objects as
        :class:`GeoBenchMetadata` stand-ins.

    Raises:
        pickle.UnpicklingError: if the pickle refers to anything outside the
            GEO-Bench sample format (it would run code) or is malformed.
    """
    if isinstance(attribute, bytes):
        attribute = attribute.decode()
    try:
        data = ast.literal_eval(attribute)
    except (ValueError, SyntaxError) as error:
        raise pickle.UnpicklingError(
            f'the pickle attribute is not a bytes literal ({error})'
        ) from None
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(
            f'the pickle attribute holds a {type(data).__name__}, not bytes'
        )
    try:
        return _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as error:  # truncated or malformed streams raise anything
        raise pickle.UnpicklingError(f'malformed pickle ({error!r})') from error
