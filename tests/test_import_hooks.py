"""Registry work that waits for the module it fills."""

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from torchgeo_mmearth._import_hooks import when_imported


@pytest.fixture
def package(tmp_path: Path) -> Iterator[str]:
    """A fresh importable package ``hooked_pkg`` with a submodule ``api``."""
    root = tmp_path / 'hooked_pkg'
    root.mkdir()
    (root / '__init__.py').write_text('from . import api\n')
    (root / 'api.py').write_text('registry = {}\n')
    sys.path.insert(0, str(tmp_path))
    yield 'hooked_pkg'
    sys.path.remove(str(tmp_path))
    for name in ('hooked_pkg', 'hooked_pkg.api'):
        sys.modules.pop(name, None)


def test_waits_for_the_import(package: str) -> None:
    calls: list[ModuleType] = []

    def register(module: ModuleType) -> None:
        module.registry['ours'] = 1
        calls.append(module)

    when_imported(f'{package}.api', register)
    assert calls == [] and f'{package}.api' not in sys.modules
    import hooked_pkg  # type: ignore[import-not-found]

    assert calls == [hooked_pkg.api]
    assert hooked_pkg.api.registry == {'ours': 1}
    # The module keeps its own loader, and the hook is gone.
    assert type(hooked_pkg.api.__loader__).__name__ == 'SourceFileLoader'
    assert type(hooked_pkg.api.__spec__.loader).__name__ == 'SourceFileLoader'
    assert not any(type(f).__name__ == '_AfterImport' for f in sys.meta_path)


def test_runs_at_once_for_an_imported_module(package: str) -> None:
    import hooked_pkg

    calls: list[ModuleType] = []
    when_imported(f'{package}.api', calls.append)
    assert calls == [hooked_pkg.api]


def test_plugin_import_leaves_torchgeo_models_alone() -> None:
    # TorchGeo's model API (seconds to import) is filled when it is imported.
    code = textwrap.dedent(
        """
        import sys
        import timm
        import torchgeo_mmearth
        assert 'torchgeo.models.api' not in sys.modules
        assert 'mmearth_convnextv2_atto' in timm.list_models('mmearth_*')
        from torchgeo.models import get_model, get_weight, list_models
        assert str(get_weight('MMEarthWeights.S2_MP_MAE')) == 'MMEarthWeights.S2_MP_MAE'
        assert 'mmearth_convnextv2_atto' in list_models()
        print(type(get_model('mmearth_convnextv2_atto')).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == 'MMEarthConvNeXtV2'


def test_a_probe_does_not_use_up_the_hook(package: str) -> None:
    # importlib.util.find_spec finds without loading (how optional packages are
    # probed); the callback still runs at the real import.
    calls: list[ModuleType] = []
    when_imported(package, calls.append)
    assert importlib.util.find_spec(package) is not None
    assert calls == [] and package not in sys.modules
    import hooked_pkg

    assert calls == [hooked_pkg]


def test_two_hooks_on_one_module(package: str) -> None:
    calls: list[str] = []
    when_imported(f'{package}.api', lambda module: calls.append('first'))
    when_imported(f'{package}.api', lambda module: calls.append('second'))
    import hooked_pkg

    assert sorted(calls) == ['first', 'second']
    assert type(hooked_pkg.api.__loader__).__name__ == 'SourceFileLoader'
    assert not any(type(f).__name__ == '_AfterImport' for f in sys.meta_path)
