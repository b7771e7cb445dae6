import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch.multiprocessing import ProcessExitedException

matplotlib.use('agg')

DATA = Path(__file__).parent / 'data'


def load_data_script(name: str) -> ModuleType:
    """Import ``tests/data/<name>/data.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f'{name}_data', DATA / name / 'data.py'
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figure_panels(figure: Figure) -> list[tuple[str, bool]]:
    """Title of every axes of a figure and whether it is a "no data" panel."""
    return [
        (axis.get_title(), any(text.get_text() == 'no data' for text in axis.texts))
        for axis in figure.axes
    ]


def launch_spawned(launch: Callable[[], None]) -> None:
    """Run a multi-process ``spawn`` launch, once more if a process was aborted.

    A gloo process of such a launch (Lightning's ``ddp_spawn``) died once of SIGABRT
    in CI, with no output, after passing in every earlier CI run; 15 runs by hand
    (7 of them under CPU load) did not reproduce it. It is not our code's failure
    (ours raises, it does not abort), so a second launch decides; a failure of the
    code under test fails both.

    Args:
        launch: builds its Trainer or Fabric and launches (a fresh one each time).
    """
    try:
        launch()
    except ProcessExitedException as error:
        if error.signal_name != 'SIGABRT':
            raise
        launch()


@pytest.fixture(scope='session')
def mmearth_data() -> ModuleType:
    """The MMEarth test-data generator module."""
    return load_data_script('mmearth')


@pytest.fixture(scope='session')
def mmearth_root(
    mmearth_data: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """All three MMEarth subsets, 10 tiles each, in the published layout."""
    root = tmp_path_factory.mktemp('mmearth')
    for subset in mmearth_data.SUBSETS:
        mmearth_data.write_corpus(root, subset, num_tiles=10, seed=0)
    return root


@pytest.fixture(scope='session')
def mmearth_v1_root(
    mmearth_data: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """MMEarth64 in the v1.0 release (``data_1M_v1.0_64``), 10 tiles.

    The tiles of the v001 ``mmearth_root`` (same seed), with the v1.0 no-data
    placeholders: ESA WorldCover 0 instead of 255, ERA5 NaN instead of +inf.
    """
    root = tmp_path_factory.mktemp('mmearth_v1')
    mmearth_data.write_corpus(root, 'MMEarth64', num_tiles=10, seed=0, version='v1.0')
    return root


@pytest.fixture(autouse=True)
def torch_hub(tmp_path: Path) -> None:
    """Keep downloads and hub caches out of the user's home directory."""
    torch.hub.set_dir(str(tmp_path / 'hub'))


@pytest.fixture(scope='session')
def mmearth_shards(
    mmearth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The MMEarth64 test corpus as litdata shards (every modality and split)."""
    from torchgeo_mmearth.corpus import shard_corpus

    out = tmp_path_factory.mktemp('shards') / 'mmearth64'
    shard_corpus(mmearth_root, 'MMEarth64', out, num_workers=2, progress=False)
    return out
