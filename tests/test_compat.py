"""The TorchGeo generation in use: the tasks come from where it keeps them, unwarned."""

import json
import subprocess
import sys

import torchgeo
from packaging.version import Version

from torchgeo_mmearth import _compat
from torchgeo_mmearth.trainers import (
    MMEarthClassificationTask,
    MMEarthSemanticSegmentationTask,
    MPMAETask,
)

NEW_TASKS = Version(torchgeo.__version__) >= Version('0.9')


def test_tasks_come_from_the_current_module() -> None:
    expected = 'torchgeo.tasks' if NEW_TASKS else 'torchgeo.trainers'
    assert expected == _compat.TASKS_MODULE
    names = {
        'BaseTask': 'BaseTask',
        'ClassificationTask': 'Classification' if NEW_TASKS else 'ClassificationTask',
        'SemanticSegmentationTask': 'SemanticSegmentation'
        if NEW_TASKS
        else 'SemanticSegmentationTask',
    }
    for ours, theirs in names.items():
        task = getattr(_compat, ours)
        # The class itself, not a deprecated alias subclassing it.
        assert task.__module__.startswith(expected + '.'), task.__module__
        assert task.__name__ == theirs
    assert _compat.extract_backbone.__module__ == f'{expected}.utils'
    assert _compat.load_state_dict.__module__ == f'{expected}.utils'


def test_our_tasks_subclass_torchgeos() -> None:
    assert issubclass(MMEarthClassificationTask, _compat.ClassificationTask)
    assert issubclass(MMEarthSemanticSegmentationTask, _compat.SemanticSegmentationTask)
    assert issubclass(MPMAETask, _compat.BaseTask)


def test_importing_every_module_raises_no_deprecation_warning() -> None:
    # A fresh interpreter, so that every import really runs and no warning filter
    # of pytest's interferes.
    code = """
import importlib, json, pkgutil, warnings
warnings.simplefilter('always')
with warnings.catch_warnings(record=True) as caught:
    import torchgeo_mmearth
    for module in pkgutil.walk_packages(torchgeo_mmearth.__path__, 'torchgeo_mmearth.'):
        importlib.import_module(module.name)
print(json.dumps([
    [w.category.__name__, w.filename, str(w.message)] for w in caught
    if issubclass(w.category, (DeprecationWarning, FutureWarning))
]))
"""
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True
    )
    caught = json.loads(result.stdout.splitlines()[-1])
    ours = [
        warning
        for warning in caught
        if 'torchgeo_mmearth' in warning[1] or 'torchgeo' in warning[2]
    ]
    assert ours == []
