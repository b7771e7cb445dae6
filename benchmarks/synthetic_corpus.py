"""The synthetic MMEarth64-layout corpus that the benchmarks read."""

import importlib.util
import shutil
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parents[1]

#: Where the benchmarks keep their corpus (git-ignored).
DEFAULT_ROOT = REPO / 'benchmarks' / 'output' / 'mmearth64'

#: The subset folder under the root, as published.
FOLDER = 'data_1M_v001_64'


def corpus_tiles(root: Path) -> int | None:
    """The number of tiles of the corpus under *root*, if a complete one is there.

    Args:
        root: the folder that holds ``data_1M_v001_64/``.

    Returns:
        The length of the HDF5 file's ``metadata`` dataset, or None when there is no
        corpus (no tile_info JSON, which is written last) or its HDF5 file cannot be
        read.
    """
    folder = root / FOLDER
    if not (folder / f'{FOLDER}_tile_info.json').exists():
        return None
    try:
        with h5py.File(folder / f'{FOLDER}.h5', 'r') as f:
            return int(f['metadata'].shape[0])
    except (OSError, KeyError):
        return None


def ensure_corpus(root: Path = DEFAULT_ROOT, tiles: int = 2000) -> Path:
    """Write a synthetic MMEarth64 corpus of *tiles* tiles under *root*, if not there.

    The corpus has the exact published layout (``tests/data/mmearth/data.py``: gzip,
    one chunk per tile, about 130 KB per tile like the real files), every tile in the
    training split. Synthetic data: the benchmarks that read it measure speed only.

    A corpus already under *root* is reused only if it has *tiles* tiles; one of
    another size (or an unreadable one) is replaced, with a line saying so. The new
    corpus is written into ``root/.data_1M_v001_64.partial`` and renamed into place
    when complete, so that an interrupted write is never taken for a corpus.

    Args:
        root: the folder that receives ``data_1M_v001_64/``.
        tiles: number of tiles to write.

    Returns:
        *root*.
    """
    folder = root / FOLDER
    found = corpus_tiles(root)
    if found == tiles:
        return root
    if found is not None:
        print(f'{folder} has {found} tiles, not {tiles}: rewriting it', flush=True)
    elif folder.exists():
        print(f'{folder} is incomplete or unreadable: rewriting it', flush=True)
    spec = importlib.util.spec_from_file_location(
        'data', REPO / 'tests/data/mmearth/data.py'
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    partial = root / f'.{FOLDER}.partial'
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted write
    print(f'writing {tiles} synthetic tiles to {root} ...', flush=True)
    module.write_corpus(
        partial, 'MMEarth64', num_tiles=tiles, seed=1, splits=(1.0, 0.0, 0.0)
    )
    shutil.rmtree(folder, ignore_errors=True)
    (partial / FOLDER).rename(folder)
    partial.rmdir()
    return root
