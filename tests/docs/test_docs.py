"""The documentation covers the package: API reference, weights table, tutorials.

The site itself is built (tutorials executed, warnings as errors) by ``make docs``;
these tests check, without Sphinx, what the build cannot: that every public name has
an entry in the API reference and that the tutorials stay executed notebooks.
"""

import importlib
import os
import pkgutil
import re
import runpy
import sys
from pathlib import Path
from types import ModuleType

import pytest

import torchgeo_mmearth
from torchgeo_mmearth.models import MMEarthWeights

DOCS = Path(__file__).resolve().parents[2] / 'docs'
sys.path.insert(0, str(DOCS / '_ext'))
mmearth_api: ModuleType = importlib.import_module('mmearth_api')

DIRECTIVE = re.compile(
    r'^\.\. (auto(?:class|function|data|exception|module)|mmearth-(?:package|submodules))'
    r':: (\S+)'
)


def public_modules() -> list[ModuleType]:
    """Every public module that declares ``__all__``, except the root."""
    infos = pkgutil.walk_packages(torchgeo_mmearth.__path__, 'torchgeo_mmearth.')
    modules = [
        importlib.import_module(info.name)
        for info in infos
        if not any(part.startswith('_') for part in info.name.split('.'))
    ]
    return [module for module in modules if hasattr(module, '__all__')]


def documented() -> set[tuple[str, int]]:
    """``(name, id(object))`` of everything the API pages document."""
    keys: set[tuple[str, int]] = set()
    for page in sorted((DOCS / 'api').glob('*.rst')):
        lines = page.read_text().splitlines()
        for index, line in enumerate(lines):
            match = DIRECTIVE.match(line)
            if match is None:
                continue
            directive, target = match.groups()
            options = []
            for option in lines[index + 1 :]:
                if not option.startswith('   '):
                    break
                options.append(option.strip())
            if directive == 'mmearth-submodules':
                exclude = next(
                    (o.split(None, 1)[1] for o in options if o.startswith(':exclude:')),
                    '',
                ).split()
                for module_name, names in mmearth_api.submodule_names(target, exclude):
                    module = importlib.import_module(module_name)
                    keys |= {(name, id(getattr(module, name))) for name in names}
            elif directive == 'mmearth-package':
                module = importlib.import_module(target)
                keys |= {(n, id(getattr(module, n))) for n in module.__all__}
            elif directive == 'automodule':
                if ':no-members:' not in options:
                    module = importlib.import_module(target)
                    keys |= {(n, id(getattr(module, n))) for n in module.__all__}
            else:
                module_name, name = target.rsplit('.', 1)
                obj = getattr(importlib.import_module(module_name), name)
                keys.add((name, id(obj)))
    return keys


def test_api_reference_documents_every_public_name() -> None:
    keys = documented()
    missing = [
        f'{module.__name__}.{name}'
        for module in public_modules()
        for name in module.__all__
        if (name, id(getattr(module, name))) not in keys
    ]
    assert not missing, f'not in docs/api/*.rst: {missing}'


def test_api_pages_are_in_the_toctree() -> None:
    index = (DOCS / 'index.md').read_text()
    for page in (DOCS / 'api').glob('*.rst'):
        assert f'api/{page.stem}\n' in index, page.name


def test_submodule_names_skip_what_the_package_exports() -> None:
    modules = dict(mmearth_api.submodule_names('torchgeo_mmearth.models'))
    names = {name for names in modules.values() for name in names}
    # Exported by torchgeo_mmearth.models itself: documented there, not again.
    assert not names & {'MMEarthWeights', 'masked_forward', 'OFFICIAL_CHECKPOINTS'}
    # Only in a submodule's __all__.
    assert (
        'masked_forward_intermediates'
        in modules['torchgeo_mmearth.models.masked_encoder']
    )
    assert 'safe_globals' in modules['torchgeo_mmearth.models.checkpoints']
    excluded = dict(
        mmearth_api.submodule_names(
            'torchgeo_mmearth.corpus', ['torchgeo_mmearth.corpus.cli']
        )
    )
    assert 'torchgeo_mmearth.corpus.cli' not in excluded
    assert 'torchgeo_mmearth.corpus.demo' in excluded


def test_weights_table_lists_every_member_and_its_meta() -> None:
    header, rows, shared = mmearth_api.weights_table()
    assert [row[0] for row in rows] == [member.name for member in MMEarthWeights]
    assert header[0] == 'member' and header[-1] == 'url'
    assert {'model', 'dataset', 'in_chans', 'bands', 'checkpoint'} <= set(header)
    for row, member in zip(rows, MMEarthWeights, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells['url'] == member.url
        assert cells['model'] == member.meta['model']
        assert cells['in_chans'] == str(member.meta['in_chans'])
        assert cells['bands'] == ', '.join(member.meta['bands'])
        for key, value in shared.items():
            assert key not in cells
            assert str(member.meta[key]) == value
    # Every meta key is either a column or shared by all members.
    keys = {key for member in MMEarthWeights for key in member.meta}
    assert keys == (set(header) - {'member', 'url'}) | set(shared)


def test_build_corpus_help_does_not_depend_on_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv('COLUMNS', '200')
    text = mmearth_api.help_text('torchgeo_mmearth.corpus.cli:build_parser')
    monkeypatch.setenv('COLUMNS', '40')
    assert mmearth_api.help_text('torchgeo_mmearth.corpus.cli:build_parser') == text
    assert os.environ['COLUMNS'] == '40'  # restored
    assert text.startswith('usage: torchgeo-mmearth build-corpus')
    usage = text.split('\n\n')[0].splitlines()
    assert len(usage) > 1  # wrapped
    assert len(usage[0]) <= mmearth_api.HELP_COLUMNS
    with pytest.raises(ValueError, match='MODULE:FUNCTION'):
        mmearth_api.help_text('torchgeo_mmearth.corpus.cli.build_parser')


def test_examples_page_lists_every_example() -> None:
    files = mmearth_api.example_files()
    repo = DOCS.parent
    expected = {p.relative_to(repo) for p in (repo / 'examples').rglob('*.py')}
    expected |= {p.relative_to(repo) for p in (repo / 'examples').rglob('*.yaml')}
    assert set(files) == expected
    assert Path('examples/conf/mpmae_demo.yaml') in files


def test_conf_executes_the_tutorials_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('NB_EXECUTION_MODE', raising=False)
    monkeypatch.setenv('PATH', '/usr/bin')  # conf.py prepends the environment's bin
    monkeypatch.setattr(sys, 'path', list(sys.path))
    conf = runpy.run_path(str(DOCS / 'conf.py'))
    assert conf['nb_execution_mode'] == 'force'
    assert conf['nb_execution_raise_on_error'] is True
    assert not any('intersphinx' in extension for extension in conf['extensions'])
    assert conf['version'] == torchgeo_mmearth.__version__


#: The tutorials in the order of the site's toctree, each with the data it runs on
#: (no downloads): the demo corpus, its labelled tiles, or the test rasters.
TUTORIALS = {
    'explore_mmearth': "subset='MMEarthDemo'",
    'pretrain_mpmae': "subset='MMEarthDemo'",
    'finetune_weights': 'BigEarthNetDemoDataModule(',
    'build_corpus': "subset='MMEarthDemo'",
    'probe_features': 'BigEarthNetDemoDataModule(',
    # the real BigEarthNet patches of the test data (a clone of the repository)
    'embed_scene': 'tests/data/bigearthnet',
}


def code_cells(text: str) -> list[str]:
    """The source of the executed cells of a MyST-NB notebook."""
    return [
        cell.split('\n```')[0] for cell in text.split('```{code-cell} ipython3')[1:]
    ]


@pytest.mark.parametrize('name', list(TUTORIALS))
def test_tutorials_are_executed_notebooks(name: str) -> None:
    text = (DOCS / 'tutorials' / f'{name}.md').read_text()
    front_matter = text.split('---\n')[1]
    assert 'format_name: myst' in front_matter
    assert 'name: python3' in front_matter  # the kernel MyST-NB executes it with
    assert len(code_cells(text)) >= 5
    assert f'tutorials/{name}\n' in (DOCS / 'index.md').read_text()
    # No downloads: the tutorials use the data the package ships.
    assert TUTORIALS[name] in ''.join(code_cells(text))
    assert 'http' not in ''.join(code_cells(text))


def test_tutorials_are_listed_in_order() -> None:
    index = (DOCS / 'index.md').read_text()
    toctree = index.split(':caption: Tutorials')[1].split('```')[0]
    entries = [line for line in toctree.splitlines() if line.startswith('tutorials/')]
    assert entries == [f'tutorials/{name}' for name in TUTORIALS]
    assert set(TUTORIALS) == {p.stem for p in (DOCS / 'tutorials').glob('*.md')}


@pytest.mark.parametrize('name', ['finetune_weights', 'probe_features'])
def test_tutorials_work_in_a_temporary_folder(name: str) -> None:
    cells = code_cells((DOCS / 'tutorials' / f'{name}.md').read_text())
    # Everything is written under a temporary folder, removed by the last cell.
    assert 'workdir = Path(tempfile.mkdtemp(' in cells[0]
    assert 'os.chdir(workdir)' in cells[0]
    assert 'shutil.rmtree(workdir)' in cells[-1]
    # The encoder is pretrained by the tutorial itself; the official weights, which
    # need a download, only appear outside the executed cells.
    assert any('torchgeo-mmearth fit --config' in cell for cell in cells)
    official = re.compile(r"weights=(weights|MMEarthWeights|'MMEarthWeights)")
    assert not any(official.search(cell) for cell in cells)


def test_package_entries_document_data_where_it_is_defined() -> None:
    from torchgeo_mmearth import models

    entries = {
        target.rsplit('.', 1)[1]: (directive, target)
        for directive, target in mmearth_api.package_entries('torchgeo_mmearth.models')
    }
    assert set(entries) == set(models.__all__)
    assert entries['MMEarthWeights'] == (
        'autoclass',
        'torchgeo_mmearth.models.MMEarthWeights',
    )
    assert entries['masked_forward'][0] == 'autofunction'
    # Where autodoc finds the #: comment, not the package that re-exports it.
    assert entries['OFFICIAL_CHECKPOINTS'] == (
        'autodata',
        'torchgeo_mmearth.models.checkpoints.OFFICIAL_CHECKPOINTS',
    )
