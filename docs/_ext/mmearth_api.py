"""What the torchgeo-mmearth documentation shows, computed from the package.

Plain functions without Sphinx, used by the directives of :mod:`mmearth_docs` and by
the tests of the documentation (``tests/docs/``).
"""

import importlib
import inspect
import os
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

#: Repository root (the parent of ``docs/``).
REPO = Path(__file__).resolve().parents[2]

#: Width of the ``--help`` texts, independent of the terminal that builds the docs.
HELP_COLUMNS = 88


def weights_table() -> tuple[list[str], list[list[str]], dict[str, str]]:
    """Rows of the MMEarthWeights table.

    Returns:
        The header (``'member'``, every ``meta`` key whose value differs between
        members, and ``'url'``), one row per member in definition order, and the
        ``meta`` entries shared by every member.
    """
    from torchgeo_mmearth.models import MMEarthWeights

    members = list(MMEarthWeights)
    keys: list[str] = []
    for member in members:
        keys += [key for key in member.meta if key not in keys]

    def shown(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ', '.join(str(v) for v in value)
        return '' if value is None else str(value)

    shared = {
        key: shown(members[0].meta.get(key))
        for key in keys
        if len({shown(member.meta.get(key)) for member in members}) == 1
    }
    varying = [key for key in keys if key not in shared]
    header = ['member', *varying, 'url']
    rows = [
        [member.name, *(shown(member.meta.get(key)) for key in varying), member.url]
        for member in members
    ]
    return header, rows, shared


def documented_elsewhere(package: ModuleType) -> set[tuple[str, int]]:
    """Names exported by a package itself.

    Args:
        package: a package with ``__all__``.

    Returns:
        ``(name, id(object))`` of every name of its ``__all__``.
    """
    return {(name, id(getattr(package, name))) for name in package.__all__}


def submodule_names(
    package_name: str, exclude: Iterable[str] = ()
) -> Iterator[tuple[str, list[str]]]:
    """Public names of the submodules of a package that the package does not export.

    Args:
        package_name: a package of torchgeo_mmearth, e.g. ``torchgeo_mmearth.corpus``.
        exclude: submodules (full names) documented elsewhere.

    Yields:
        ``(module name, names)`` for every submodule (recursively, in name order)
        whose ``__all__`` lists names that neither the package's ``__all__`` nor an
        earlier submodule lists (a name re-exported by another submodule is
        documented once).
    """
    package = importlib.import_module(package_name)
    seen = documented_elsewhere(package)
    infos = pkgutil.walk_packages(package.__path__, package_name + '.')
    for info in sorted(infos, key=lambda info: info.name):
        if info.name in exclude:
            continue
        module = importlib.import_module(info.name)
        names = []
        for name in getattr(module, '__all__', ()):
            key = (name, id(getattr(module, name)))
            if key not in seen:
                seen.add(key)
                names.append(name)
        if names:
            yield info.name, names


def package_entries(package_name: str) -> list[tuple[str, str]]:
    """Autodoc entries for every name a package exports.

    Classes and functions are documented under the package; data under the submodule
    that defines them, where autodoc finds their ``#:`` documentation comments.

    Args:
        package_name: a package of torchgeo_mmearth with ``__all__``.

    Returns:
        ``(directive, target)`` per name of the package's ``__all__``, in its order.
    """
    package = importlib.import_module(package_name)
    infos = pkgutil.walk_packages(package.__path__, package_name + '.')
    submodules = [importlib.import_module(info.name) for info in infos]
    entries = []
    for name in package.__all__:
        obj = getattr(package, name)
        directive = autodoc_directive(obj)
        target = f'{package_name}.{name}'
        if directive == 'autodata':
            for module in submodules:
                if name in getattr(module, '__all__', ()) and (
                    getattr(module, name) is obj
                ):
                    target = f'{module.__name__}.{name}'
                    break
        entries.append((directive, target))
    return entries


def autodoc_directive(obj: Any) -> str:
    """The autodoc directive that documents an object.

    Args:
        obj: a class, function or data object.

    Returns:
        ``autoclass``, ``autofunction`` or ``autodata``.
    """
    if inspect.isclass(obj):
        return 'autoclass'
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return 'autofunction'
    return 'autodata'


def example_files() -> list[Path]:
    """Scripts and configurations under ``examples/``, relative to the repository.

    Returns:
        The ``.py`` and ``.yaml`` files, scripts first, each group in name order.
    """
    examples = REPO / 'examples'
    scripts = sorted(examples.rglob('*.py'))
    configs = sorted(examples.rglob('*.yaml'))
    return [path.relative_to(REPO) for path in scripts + configs]


def help_text(parser_factory: str) -> str:
    """The ``--help`` text of an argument parser, at a fixed width.

    Args:
        parser_factory: ``MODULE:FUNCTION``, a function that returns the parser.

    Returns:
        The help text, :data:`HELP_COLUMNS` wide.

    Raises:
        ValueError: if *parser_factory* is not ``MODULE:FUNCTION``.
    """
    module_name, sep, function = parser_factory.partition(':')
    if not sep:
        raise ValueError(f'expected MODULE:FUNCTION, got {parser_factory!r}')
    parser = getattr(importlib.import_module(module_name), function)()
    previous = os.environ.get('COLUMNS')
    os.environ['COLUMNS'] = str(HELP_COLUMNS)
    try:
        text: str = parser.format_help()
    finally:
        if previous is None:
            del os.environ['COLUMNS']
        else:
            os.environ['COLUMNS'] = previous
    return text
