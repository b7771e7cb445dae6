"""``import torchgeo_mmearth`` is cheap, and the models register in any import order.

Each case runs in a fresh interpreter: what a module import does can only be seen
before anything imported it.
"""

import subprocess
import sys
import textwrap

import pytest

# What the plugin must not import by itself: each takes seconds, and whoever needs
# them imports them.
HEAVY = ('torch', 'timm', 'segmentation_models_pytorch', 'torchgeo', 'lightning')

# Every documented way to reach the registered models, after the given imports.
REGISTERED = textwrap.dedent(
    """
    import segmentation_models_pytorch as smp
    import timm
    from torchgeo.models import get_model, get_weight, list_models

    assert timm.list_models('mmearth*')[:2] == [
        'mmearth_convnextv2_atto', 'mmearth_convnextv2_atto_p16'
    ], timm.list_models('mmearth*')
    assert timm.is_model('mmearth_convnextv2_atto_p16')
    model = timm.create_model('mmearth_convnextv2_atto', in_chans=12, num_classes=3)
    unet = smp.Unet(
        'mmearth_convnextv2_atto', encoder_weights=None, in_channels=12, classes=2
    )
    assert 'mmearth_convnextv2_atto' in smp.encoders.get_encoder_names()
    assert str(get_weight('MMEarthWeights.S2_MP_MAE')) == 'MMEarthWeights.S2_MP_MAE'
    assert 'mmearth_convnextv2_atto' in list_models()
    print(type(model).__name__, type(unet.encoder).__name__,
          type(get_model('mmearth_convnextv2_atto')).__name__)
    """
)


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_loads_nothing_heavy() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import torchgeo_mmearth
        import torchgeo_mmearth.models
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
        print(sorted(name for name in sys.modules if name.startswith('torchgeo_')))
        """
    )
    heavy, ours = run(code).splitlines()
    assert heavy == '[]'
    assert ours == (
        "['torchgeo_mmearth', 'torchgeo_mmearth._import_hooks', "
        "'torchgeo_mmearth.models']"
    )


@pytest.mark.parametrize(
    ('before', 'plugin'),
    [
        ('', 'import torchgeo_mmearth'),
        ('', 'from torchgeo_mmearth.models import MMEarthWeights'),
        ('import timm', 'import torchgeo_mmearth'),
        ('import segmentation_models_pytorch', 'import torchgeo_mmearth'),
        ('import torchgeo.models', 'import torchgeo_mmearth'),
        (
            'import importlib.util; importlib.util.find_spec("timm")',
            'import torchgeo_mmearth',
        ),
    ],
)
def test_registered_in_any_import_order(before: str, plugin: str) -> None:
    # The plugin before or after timm, smp and TorchGeo, and probed first.
    code = f'{before}\n{plugin}\nimport importlib.util\n'
    code += 'importlib.util.find_spec("segmentation_models_pytorch")\n' + REGISTERED
    assert run(code).split() == [
        'MMEarthConvNeXtV2',
        'MMEarthConvNeXtV2Encoder',
        'MMEarthConvNeXtV2',
    ]


def test_subpackages_and_names_load_on_first_use() -> None:
    import torchgeo_mmearth
    from torchgeo_mmearth import models

    for name in torchgeo_mmearth.__all__:
        assert getattr(torchgeo_mmearth, name).__name__ == f'torchgeo_mmearth.{name}'
    for name in models.__all__:
        assert getattr(models, name) is not None, name
    assert set(models.__all__) <= set(dir(models))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        models.nothing  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        torchgeo_mmearth.nothing  # noqa: B018


@pytest.mark.parametrize(
    ('command', 'absent'),
    [
        (['export-weights', '--help'], HEAVY),
        (['probe', '--help'], ('torchgeo', 'segmentation_models_pytorch')),
        # The corpus builder and the shard writer read no dataset to print help.
        (['build-corpus', '--help'], ('torchgeo', 'matplotlib', 'litdata')),
        (['shard', '--help'], ('torchgeo', 'matplotlib', 'litdata')),
    ],
)
def test_help_imports_only_what_it_needs(
    command: list[str], absent: tuple[str, ...]
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from torchgeo_mmearth.main import main
        try:
            main({command!r})
        except SystemExit as exit:
            assert exit.code == 0
        print(sorted(name for name in {absent!r} if name in sys.modules))
        """
    )
    output = run(code)
    assert f'torchgeo-mmearth {command[0]}' in output  # the usage line
    assert output.splitlines()[-1] == '[]'
