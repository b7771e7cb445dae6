"""The synthetic MMEarth64-layout corpus that the benchmarks read."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Where the benchmarks keep their corpus (git-ignored).
DEFAULT_ROOT = REPO / 'benchmarks' / 'output' / 'mmearth64'


def ensure_corpus(root: Path = DEFAULT_ROOT, tiles: int = 2000) -> Path:
    """Write a synthetic MMEarth64 corpus under *root* unless it is already there.

    The corpus has the exact published layout (``tests/data/mmearth/data.py``: gzip,
    one chunk per tile, about 130 KB per tile like the real files), every tile in the
    training split. Synthetic data: the benchmarks that read it measure speed only.

    Args:
        root: the folder that receives ``data_1M_v001_64/``.
        tiles: number of tiles to write.

    Returns:
        *root*.
    """
    if (root / 'data_1M_v001_64' / 'data_1M_v001_64_tile_info.json').exists():
        return root
    spec = importlib.util.spec_from_file_location(
        'data', REPO / 'tests/data/mmearth/data.py'
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f'writing {tiles} synthetic tiles to {root} ...', flush=True)
    module.write_corpus(
        root, 'MMEarth64', num_tiles=tiles, seed=1, splits=(1.0, 0.0, 0.0)
    )
    return root
