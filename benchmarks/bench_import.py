#!/usr/bin/env python3
"""Start-up time: importing the plugin and its commands' --help, against TorchGeo's.

Each command runs in a fresh interpreter, alternating between the commands, and the
median wall time of ``--repeats`` runs is printed, with the plugin's figures less
the baseline that a user of the same feature pays anyway (``import torchgeo`` for
the package, creating timm's own ConvNeXt V2 atto for a registered model,
``torchgeo --help`` for the command line). ``--before DIR`` adds the same figures for another checkout of this
repository (e.g. a ``git worktree`` of an earlier commit), imported through
``PYTHONPATH``, so that before and after are measured in one run::

    python benchmarks/bench_import.py --repeats 5
    git worktree add /tmp/before HEAD~1
    python benchmarks/bench_import.py --repeats 5 --before /tmp/before
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MAIN = 'import sys; from torchgeo_mmearth.main import main; sys.exit(main())'
CREATE = "timm.create_model('{}', pretrained=False)"

BASELINES = {
    'import torchgeo': [sys.executable, '-c', 'import torchgeo'],
    'import torchgeo.models': [sys.executable, '-c', 'import torchgeo.models'],
    'import timm + timm.create_model (convnextv2_atto)': [
        sys.executable,
        '-c',
        'import timm; ' + CREATE.format('convnextv2_atto'),
    ],
    'torchgeo --help': [str(BIN / 'torchgeo'), '--help'],
}
PLUGIN = {
    'import torchgeo_mmearth': [sys.executable, '-c', 'import torchgeo_mmearth'],
    'import torchgeo + torchgeo_mmearth': [
        sys.executable,
        '-c',
        'import torchgeo, torchgeo_mmearth',
    ],
    'import torchgeo_mmearth + timm.create_model (mmearth_convnextv2_atto)': [
        sys.executable,
        '-c',
        'import torchgeo_mmearth, timm; ' + CREATE.format('mmearth_convnextv2_atto'),
    ],
    'torchgeo-mmearth --help': [sys.executable, '-c', MAIN, '--help'],
    'torchgeo-mmearth probe --help': [sys.executable, '-c', MAIN, 'probe', '--help'],
    'torchgeo-mmearth export-weights --help': [
        sys.executable,
        '-c',
        MAIN,
        'export-weights',
        '--help',
    ],
    'torchgeo-mmearth build-corpus --help': [
        sys.executable,
        '-c',
        MAIN,
        'build-corpus',
        '--help',
    ],
}


def run(command: list[str], pythonpath: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    start = time.perf_counter()
    subprocess.run(
        command, env=env, cwd=pythonpath, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--before', type=Path, help='another checkout to compare')
    args = parser.parse_args()

    checkouts = {'now': REPO}
    if args.before is not None:
        checkouts = {'before': args.before.resolve(), 'now': REPO}
    jobs = [('torchgeo', name, command, REPO) for name, command in BASELINES.items()]
    jobs += [
        (label, name, command, path)
        for label, path in checkouts.items()
        for name, command in PLUGIN.items()
    ]
    times: dict[tuple[str, str], list[float]] = {(j[0], j[1]): [] for j in jobs}
    for _ in range(args.repeats):
        for label, name, command, path in jobs:
            times[label, name].append(run(command, path))
    median = {key: statistics.median(values) for key, values in times.items()}

    print(f'median of {args.repeats} fresh interpreters, seconds\n')
    print('| command | ' + ' | '.join(checkouts) + ' |')
    print('| --- |' + ' --- |' * len(checkouts))
    for name in BASELINES:
        row = [f'{median["torchgeo", name]:.2f}'] * len(checkouts)
        print(f'| {name} (TorchGeo) | ' + ' | '.join(row) + ' |')
    for name in PLUGIN:
        row = [f'{median[label, name]:.2f}' for label in checkouts]
        print(f'| {name} | ' + ' | '.join(row) + ' |')
    base_import = median['torchgeo', 'import torchgeo']
    base_create = median[
        'torchgeo', 'import timm + timm.create_model (convnextv2_atto)'
    ]
    base_help = median['torchgeo', 'torchgeo --help']
    for label in checkouts:
        added = median[label, 'import torchgeo + torchgeo_mmearth'] - base_import
        added_create = (
            median[
                label,
                'import torchgeo_mmearth + timm.create_model (mmearth_convnextv2_atto)',
            ]
            - base_create
        )
        added_help = median[label, 'torchgeo-mmearth --help'] - base_help
        print(
            f'\n{label}: the plugin adds {added:+.2f} s to import torchgeo, '
            f'{added_create:+.2f} s to creating a timm ConvNeXt V2 atto, and '
            f'torchgeo-mmearth --help {added_help:+.2f} s to torchgeo --help'
        )


if __name__ == '__main__':
    main()
