"""The official MP-MAE checkpoints and a safe loader for them.

The MP-MAE pretraining checkpoints of MMEarth (Nedungadi et al., "MMEarth:
Exploring Multi-Modal Pretext Tasks For Geospatial Representation Learning",
ECCV 2024, https://arxiv.org/abs/2405.02771) are published at
``https://sid.erda.dk/share_redirect/g23YOnaaTp/<folder>/checkpoint-199.pth``.
:data:`OFFICIAL_CHECKPOINTS` describes each of them, following the checkpoint
table of the README of https://github.com/vishalned/MMEarth-train.

Each file is a pickle of ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``
whose ``args`` is the ``argparse.Namespace`` of the pretraining script, holding
``pathlib`` paths (and possibly NumPy values). :func:`load_checkpoint` unpickles
it with PyTorch's ``weights_only`` unpickler and the allow-list
:data:`SAFE_GLOBALS` of those plain-data types: no code from the file can run,
and anything else is refused with :class:`UnsafeCheckpointError`. A file that is
truncated, or no PyTorch checkpoint at all, raises :class:`CorruptCheckpointError`
naming it.
"""

import argparse
import contextlib
import hashlib
import http.client
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch

from .._atomic import atomic_path
from .._pickle import NUMPY_GLOBALS
from ..modalities import SENTINEL2_INPUT_BANDS, SENTINEL2_RGB_BANDS

__all__ = [
    'OFFICIAL_CHECKPOINTS',
    'OFFICIAL_URL_ROOT',
    'SAFE_GLOBALS',
    'CheckpointDownloadError',
    'CorruptCheckpointError',
    'OfficialCheckpoint',
    'UnsafeCheckpointError',
    'load_checkpoint',
    'safe_globals',
]

#: Share of the MMEarth pretraining checkpoints (vishalned/MMEarth-train README).
OFFICIAL_URL_ROOT = 'https://sid.erda.dk/share_redirect/g23YOnaaTp'


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One published MP-MAE pretraining checkpoint.

    Args:
        name: name of the :class:`~torchgeo_mmearth.models.MMEarthWeights` member
            (its lower-cased form is the timm pretrained tag).
        folder: folder of the checkpoint on the MMEarth share, as listed in the
            README of vishalned/MMEarth-train.
        model: registered timm model that has the checkpoint's architecture.
        bands: input bands, in the order the model was pretrained on.
        dataset: pretraining corpus (TorchGeo's subset names ``MMEarth``,
            ``MMEarth64``, ``MMEarth100k``).
        input_size: side of the random crop fed to the model during pretraining.
        patch_size: masked-autoencoder patch size (total stride of the encoder).
        outputs: pretext targets, as the README describes them.
        loss: multi-task loss weighting: ``'uncertainty'`` or ``'unweighted'``.
        ssl_method: ``'mp-mae'`` for multi-pretext models, ``'fcmae'`` for the
            models that reconstruct their input only.

    If you use these weights in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    name: str
    folder: str
    model: str
    bands: tuple[str, ...]
    dataset: str
    input_size: int
    patch_size: int
    outputs: str
    loss: str
    ssl_method: str

    @property
    def url(self) -> str:
        """Download URL of ``checkpoint-199.pth``."""
        return f'{OFFICIAL_URL_ROOT}/{self.folder}/checkpoint-199.pth'

    @property
    def file_name(self) -> str:
        """Name of the file in the torch.hub cache.

        Every official file is called ``checkpoint-199.pth``, so the cache name
        carries the folder: a plain basename would make the checkpoints overwrite
        (or, worse, stand in for) one another.
        """
        return f'mmearth-{self.folder}-checkpoint-199.pth'

    @property
    def tag(self) -> str:
        """Pretrained tag for timm: ``timm.create_model(f'{model}.{tag}')``."""
        return self.name.lower()

    @property
    def in_chans(self) -> int:
        """Number of input bands."""
        return len(self.bands)


_S2, _RGB = SENTINEL2_INPUT_BANDS, SENTINEL2_RGB_BANDS

#: Every checkpoint of the README table of vishalned/MMEarth-train, headline first.
OFFICIAL_CHECKPOINTS: tuple[OfficialCheckpoint, ...] = (
    OfficialCheckpoint(
        'S2_MP_MAE',
        'pt-all_mod_atto_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_atto',
        _S2,
        'MMEarth64',
        56,
        8,
        'all modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_UNWEIGHTED',
        'pt-all_mod_atto_1M_64_unweighted_56-8',
        'mmearth_convnextv2_atto',
        _S2,
        'MMEarth64',
        56,
        8,
        'all modalities',
        'unweighted',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_MMEARTH',
        'pt-all_mod_atto_1M_128_uncertainty_112-16',
        'mmearth_convnextv2_atto_p16',
        _S2,
        'MMEarth',
        112,
        16,
        'all modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_MMEARTH100K',
        'pt-all_mod_atto_100k_128_uncertainty_112-16',
        'mmearth_convnextv2_atto_p16',
        _S2,
        'MMEarth100k',
        112,
        16,
        'all modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_TINY',
        'pt-all_mod_tiny_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_tiny',
        _S2,
        'MMEarth64',
        56,
        8,
        'all modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_IMAGE_LEVEL',
        'pt-img_mod_atto_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_atto',
        _S2,
        'MMEarth64',
        56,
        8,
        'image-level modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MP_MAE_PIXEL_LEVEL',
        'pt-pix_mod_atto_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_atto',
        _S2,
        'MMEarth64',
        56,
        8,
        'pixel-level modalities',
        'uncertainty',
        'mp-mae',
    ),
    OfficialCheckpoint(
        'S2_MAE',
        'pt-S2_atto_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_atto',
        _S2,
        'MMEarth64',
        56,
        8,
        'Sentinel-2 (12 bands)',
        'uncertainty',
        'fcmae',
    ),
    OfficialCheckpoint(
        'RGB_MAE',
        'pt-rgb_atto_1M_64_uncertainty_56-8',
        'mmearth_convnextv2_atto',
        _RGB,
        'MMEarth64',
        56,
        8,
        'Sentinel-2 B2, B3, B4 (BGR)',
        'uncertainty',
        'fcmae',
    ),
    OfficialCheckpoint(
        'RGB_MAE_MMEARTH',
        'pt-rgb_atto_1M_128_uncertainty_112-16',
        'mmearth_convnextv2_atto_p16',
        _RGB,
        'MMEarth',
        112,
        16,
        'Sentinel-2 B2, B3, B4 (BGR)',
        'uncertainty',
        'fcmae',
    ),
)


class CheckpointDownloadError(OSError):
    """A checkpoint could not be downloaded, or its download failed its checksum.

    Nothing is left in the cache: the download goes to a temporary file that is
    moved into place only once complete and checked.

    Attributes:
        url: what was downloaded.
        cached: where the file would have been cached.
        reason: why it failed, in one line.
    """

    def __init__(self, url: str, cached: str, reason: str) -> None:
        """Initialize a new CheckpointDownloadError instance.

        Args:
            url: what was downloaded.
            cached: where the file would have been cached.
            reason: why it failed, in one line.
        """
        super().__init__(f'could not download {url}: {reason}')
        self.url = url
        self.cached = cached
        self.reason = reason


class CorruptCheckpointError(OSError):
    """A checkpoint file is truncated, or is not a PyTorch checkpoint at all.

    Attributes:
        path: the file.
        reason: what is wrong with it, in one line.
    """

    def __init__(self, path: str, reason: str) -> None:
        """Initialize a new CorruptCheckpointError instance.

        Args:
            path: the file.
            reason: what is wrong with it, in one line.
        """
        super().__init__(
            f'{path} is truncated or not a PyTorch checkpoint ({reason}); copy or '
            'download it again'
        )
        self.path = path
        self.reason = reason


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickles objects outside the allow-list of :func:`load_checkpoint`.

    Loading it would let the file run arbitrary code, so it is refused.
    """


#: What the official checkpoints pickle besides tensors and containers: the
#: ``argparse.Namespace`` of the pretraining arguments, ``pathlib`` paths (under
#: their Python <= 3.12 and 3.13 module names), and NumPy scalars and numeric
#: arrays. None of them runs code when unpickled.
SAFE_GLOBALS: tuple[Callable[..., Any] | tuple[Callable[..., Any], str], ...] = (
    argparse.Namespace,
    *(
        entry
        for cls in (
            pathlib.Path,
            pathlib.PosixPath,
            pathlib.WindowsPath,
            pathlib.PurePath,
            pathlib.PurePosixPath,
            pathlib.PureWindowsPath,
        )
        for entry in (cls, (cls, f'pathlib.{cls.__name__}'))
    ),
    # dtype classes and ndarray by their own names: BUILD checks the type of what
    # the rebuilders return.
    *(value for value in NUMPY_GLOBALS.values() if isinstance(value, type)),
    *((value, name) for name, value in NUMPY_GLOBALS.items()),
)


@contextlib.contextmanager
def safe_globals() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in ``weights_only`` loads, for the duration.

    Used around timm's pretrained loading, which calls ``torch.load(...,
    weights_only=True)`` itself. The previous allow-list is restored on exit.

    Yields:
        Nothing.
    """
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        yield


_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,})\.')


def _is_url(source: str) -> bool:
    return re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]+://', source) is not None


def _download(
    url: str,
    *,
    model_dir: str | os.PathLike[str] | None,
    file_name: str | None,
    progress: bool,
    check_hash: bool,
) -> str:
    """Download *url* into the torch.hub cache unless it is there already.

    Returns:
        The path of the cached file.
    """
    if model_dir is None:
        model_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    name = file_name or os.path.basename(urlparse(url).path)
    cached = os.path.join(model_dir, name)
    if os.path.exists(cached):
        return cached
    hash_prefix = None
    if check_hash:
        # torch.hub's convention, name-<sha256 prefix>.ext, read off the URL (not
        # the cache name) and with 8+ digits, so that the official
        # ``checkpoint-199.pth`` is not taken for a hash starting "199".
        match = _HASH_IN_NAME.search(os.path.basename(urlparse(url).path))
        hash_prefix = match.group(1) if match else None
    try:
        _download_to(url, cached, hash_prefix, progress)
    except HTTPError as error:
        raise CheckpointDownloadError(
            url, cached, f'HTTP {error.code} {error.reason}'
        ) from None
    except URLError as error:
        raise CheckpointDownloadError(url, cached, str(error.reason)) from None
    except CheckpointDownloadError:
        raise
    except (OSError, http.client.HTTPException) as error:
        reason = f'{type(error).__name__}: {error}'
        raise CheckpointDownloadError(url, cached, reason) from None
    return cached


def _download_to(url: str, path: str, hash_prefix: str | None, progress: bool) -> None:
    """Download *url* to *path* whole and checked, or not at all.

    :func:`torch.hub.download_url_to_file` without its gap: urllib does not
    notice a transfer cut short of its Content-Length, so a truncated file would
    be cached. The bytes go to a temporary file beside *path*, moved into place
    only once their count and hash are right (the file is closed first: the
    checks run inside the ``with``, the rename when it exits).

    Raises:
        CheckpointDownloadError: for a short transfer or a hash mismatch.
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    request = Request(url, headers={'User-Agent': 'torchgeo-mmearth'})
    digest = hashlib.sha256()
    with (
        atomic_path(path) as partial,
        urlopen(request, timeout=60) as response,
        open(partial, 'wb') as file,
    ):
        length = response.headers.get('Content-Length')
        expected = int(length) if length is not None else None
        with tqdm(
            total=expected,
            disable=not progress,
            unit='B',
            unit_scale=True,
            unit_divisor=1024,
            desc=os.path.basename(path),
        ) as bar:
            while chunk := response.read(1 << 20):
                file.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        received = file.tell()
        if expected is not None and received != expected:
            raise CheckpointDownloadError(
                url, path, f'the transfer stopped after {received} of {expected} bytes'
            )
        if hash_prefix is not None and not digest.hexdigest().startswith(hash_prefix):
            raise CheckpointDownloadError(
                url,
                path,
                f'checksum mismatch: the SHA-256 of the download, '
                f'{digest.hexdigest()}, does not start with {hash_prefix}, the '
                'hash in its name',
            )


def load_checkpoint(
    source: str | os.PathLike[str],
    *,
    map_location: str | torch.device = 'cpu',
    progress: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
    file_name: str | None = None,
    check_hash: bool = False,
    mmap: bool = False,
) -> Any:
    """Load an MMEarth checkpoint without letting it run code.

    The file is unpickled with ``torch.load(..., weights_only=True)`` and
    :data:`SAFE_GLOBALS` allowed: tensors, containers, ``argparse.Namespace``,
    ``pathlib`` paths and NumPy numbers. This reads the official MP-MAE
    checkpoints, the exports of ``torchgeo-mmearth export-weights`` and
    Lightning checkpoints of TorchGeo tasks.

    Args:
        source: local path, or URL (``https://``, ``file://``, ...) downloaded
            into the torch.hub cache (``<hub dir>/checkpoints``) on first use.
        map_location: where to put the tensors.
        progress: show a progress bar while downloading.
        model_dir: cache folder instead of ``<hub dir>/checkpoints``.
        file_name: name of the cached file instead of the URL's basename.
        check_hash: check the cached file against the hash prefix in its name,
            as :func:`torch.hub.load_state_dict_from_url` does.
        mmap: map the tensors from the file instead of reading them (for a
            large checkpoint that is only inspected; files in PyTorch's legacy
            format are read).

    Returns:
        The unpickled checkpoint.

    Raises:
        FileNotFoundError: if *source* is a path that does not exist.
        CheckpointDownloadError: if *source* is a URL that cannot be downloaded
            (no network, HTTP error, truncated transfer) or whose download fails
            the hash check.
        UnsafeCheckpointError: if the file pickles anything outside the
            allow-list (naming what it found).
        CorruptCheckpointError: if the file is truncated or not a PyTorch
            checkpoint (naming it).
    """
    source = os.fspath(source)
    if _is_url(source):
        path = _download(
            source,
            model_dir=model_dir,
            file_name=file_name,
            progress=progress,
            check_hash=check_hash,
        )
    else:
        path = source
        if not os.path.isfile(path):
            raise FileNotFoundError(f'no checkpoint file at {path!r}')
    try:
        with safe_globals():
            return torch.load(
                path,
                map_location=map_location,
                weights_only=True,
                # PyTorch maps zip archives only, not the legacy format
                mmap=mmap and zipfile.is_zipfile(path),
            )
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as error:
        message = str(error)
        unsafe = 'Unsupported global' in message
        # A file that is not a whole zip archive (torch.save's format since 1.6)
        # was cut short or is something else; PyTorch's zip reader names damage
        # inside an archive.
        if not unsafe and 'PytorchStreamReader' in message:
            reason = message.split('. ')[0]
            raise CorruptCheckpointError(source, f'PyTorch: {reason}') from None
        if not unsafe and not zipfile.is_zipfile(path):
            reason = 'it is no zip archive, the format torch.save writes'
            raise CorruptCheckpointError(source, reason) from None
        if not isinstance(error, pickle.UnpicklingError):
            raise
        raise UnsafeCheckpointError(
            f'refusing to load {source!r}: it pickles '
            f'{_unsafe_globals(path) or "objects"} outside the allow-list of MMEarth '
            'checkpoints (tensors, containers, argparse.Namespace, pathlib paths, '
            'NumPy numbers). Unpickling them could run arbitrary code. Only the '
            'official MP-MAE checkpoints, torchgeo-mmearth exports and Lightning '
            f'checkpoints are accepted. PyTorch said: {error}'
        ) from None


def _unsafe_globals(path: str) -> str:
    """The pickled globals of *path* that :data:`SAFE_GLOBALS` does not allow."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # not a zip checkpoint: PyTorch's message says it
        return ''
    allowed = {
        entry[1]
        if isinstance(entry, tuple)
        else f'{entry.__module__}.{entry.__qualname__}'
        for entry in SAFE_GLOBALS
    }
    return ', '.join(name for name in found if name not in allowed)
