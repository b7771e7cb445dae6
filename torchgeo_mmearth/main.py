"""The ``torchgeo-mmearth`` command.

``torchgeo-mmearth fit|validate|test|predict ...`` is TorchGeo's own command-line
interface (LightningCLI) with this plugin imported first, so configs can name the
plugin's classes by their short names (``class_path: MPMAETask``) and weights by
their enum name (``weights: MMEarthWeights.S2_MP_MAE``). Five more subcommands:

* ``build-corpus``: build an MMEarth-format corpus from your own rasters;
* ``shard``: convert an MMEarth-format corpus into litdata shards, to stream to
  many GPUs and nodes (:func:`torchgeo_mmearth.corpus.shard_corpus`);
* ``export-weights CKPT OUT``: write the encoder of an :class:`MPMAETask`
  checkpoint as a timm state dict with its metadata;
* ``probe``: frozen-feature k-NN and linear probes and label efficiency on any
  TorchGeo classification datamodule (:mod:`torchgeo_mmearth.evaluation`);
* ``embed``: georeferenced embeddings of Sentinel-2 rasters, as a COG and a
  GeoParquet (:mod:`torchgeo_mmearth.inference`).

``torchgeo-mmearth --help`` (or no arguments) lists them, ``torchgeo-mmearth
COMMAND --help`` shows the options of one, ``torchgeo-mmearth --version`` prints
the versions of the plugin and of TorchGeo. A mistake (a missing or corrupt file,
an output that exists, an option that does not fit) is one line, ``error:
<message>``, naming the file or flag, and the exit status 2 (130 for Ctrl-C;
``fit`` stopped by SIGTERM or SIGUSR1 ends with 143 or 138, 128 + the signal's
number, after saving a checkpoint and printing the command that resumes);
``torchgeo-mmearth --debug COMMAND ...`` or ``TORCHGEO_MMEARTH_DEBUG=1`` shows the
full traceback instead.
"""

import argparse
import importlib.metadata
import logging
import os
import pickle
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import atomic_path
from ._errors import (
    USER_ERRORS,
    CommandLineError,
    RunError,
    check_new_output,
    debug_mode,
    report_error,
)
from ._interrupt import command_line, report_interrupted

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

__all__ = ['export_weights', 'main']

#: TorchGeo's subcommands (LightningCLI), with the first line of their help.
_LIGHTNING_COMMANDS = {
    'fit': 'train a model: the full optimization routine',
    'validate': 'one evaluation epoch over the validation set',
    'test': 'one evaluation epoch over the test set',
    'predict': 'run inference on your data',
}
#: The plugin's own subcommands.
_COMMANDS = {
    'build-corpus': 'build an MMEarth-format corpus from your own rasters',
    'shard': 'convert an MMEarth-format corpus into litdata shards',
    'export-weights': 'write the encoder of an MPMAETask checkpoint for timm',
    'probe': 'k-NN and linear probes of frozen features on a dataset',
    'embed': 'embed Sentinel-2 rasters as a COG and a GeoParquet',
}
# LightningCLI's own values of --ckpt_path, which name no file.
_CKPT_PATH_NAMES = ('best', 'last', 'hpc', 'registry')
# How jsonargparse begins the error of a class named by class_path, and those of
# the types that a key also takes (None, a single callback instead of a list).
_CLASS_PATH = 'Problem with given class_path'
_OTHER_TYPES = ("Expected a <class 'NoneType'>", 'Not a valid subclass')


def export_weights(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overwrite: bool = False,
) -> Path:
    """Write the encoder of an MPMAETask checkpoint for TorchGeo, timm and the plugin.

    The output, ``{'state_dict': ..., 'hyper_parameters': {'model': ...}, 'meta':
    {...}}``, holds the encoder under TorchGeo's ``model.`` prefix and loads with
    ``torch.load(out, weights_only=True)``. TorchGeo's tasks take it as
    ``weights='<out>'`` (``Classification`` / ``ClassificationTask``, and
    ``SemanticSegmentation`` with the same backbone); timm takes it as a
    pretrained file (``timm.create_model(meta['model'], pretrained=True,
    pretrained_cfg_overlay={'file': out})``), and so do the plugin's loaders
    (``MMEarthWeights.S2_MP_MAE.get_state_dict(out)`` for an encoder of that
    member's architecture, the model entry points' ``weights=``). ``meta``
    records the timm model, the input bands and their number, the patch and
    input sizes and the corpus the encoder was pretrained on.

    Args:
        checkpoint: a Lightning checkpoint written while training
            :class:`~torchgeo_mmearth.trainers.MPMAETask`; it is read without
            running pickled code
            (:func:`~torchgeo_mmearth.models.load_checkpoint`).
        out: the file to write; it appears only once complete.
        overwrite: replace *out* if it exists.

    Returns:
        The written file.

    Raises:
        FileNotFoundError: if *checkpoint* does not exist.
        FileExistsError: if *out* exists and *overwrite* is False.
        ValueError: if *checkpoint* is not an MPMAETask checkpoint (an export of
            this function, an official MP-MAE checkpoint, another task's).
        ~torchgeo_mmearth.models.checkpoints.CorruptCheckpointError: if
            *checkpoint* is truncated or not a PyTorch checkpoint.
    """
    # Imported here: the other subcommands and --help do not need torch.
    import torch

    from .models.checkpoints import load_checkpoint

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} exists; pass overwrite=True to replace it')
    data = load_checkpoint(checkpoint)
    _check_mpmae_checkpoint(checkpoint, data)
    hparams = data['hyper_parameters']
    # The encoder, under the prefix of TorchGeo's self.model: what TorchGeo's
    # extract_backbone reads, with hyper_parameters['model'].
    state_dict = {
        key: value
        for key, value in data['state_dict'].items()
        if key.startswith('model.')
    }
    if not state_dict:
        raise ValueError(f'{checkpoint} holds no encoder weights (no "model." keys)')
    record = data.get('mmearth', {})
    corpus = record.get('corpus', {})
    meta = {
        'model': hparams['model'],
        'in_chans': hparams['in_channels'],
        'bands': corpus.get('bands'),
        'patch_size': hparams['patch_size'],
        'input_size': hparams.get('input_size'),
        'corpus': corpus.get('subset'),
        'ssl_method': 'mp-mae',
        'target_modalities': hparams.get('target_modalities'),
        'epoch': data.get('epoch'),
        'global_step': data.get('global_step'),
    }
    with atomic_path(out) as temporary:
        torch.save(
            {
                'state_dict': state_dict,
                'hyper_parameters': {'model': hparams['model']},
                'meta': meta,
            },
            temporary,
        )
    return out


def _check_mpmae_checkpoint(checkpoint: str | os.PathLike[str], data: Any) -> None:
    """Refuse what is not a Lightning checkpoint of MPMAETask, saying what it is.

    Raises:
        ValueError: naming the file and what it holds instead.
    """
    entries: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    hparams = entries.get('hyper_parameters', {})
    missing = [n for n in ('model', 'in_channels', 'patch_size') if n not in hparams]
    if 'state_dict' in entries and not missing:
        return
    if not isinstance(data, Mapping):
        what = f'a {type(data).__name__}, not a checkpoint dictionary'
    elif 'meta' in data:
        what = (
            'an encoder already exported by export-weights '
            f'({data["meta"].get("model")}); use it as it is'
        )
    elif 'model' in data and 'args' in data:
        what = 'an official MP-MAE pretraining checkpoint; use it as it is'
    elif 'state_dict' in data:
        task = hparams.get('_class_path', 'another task')
        what = (
            f'a Lightning checkpoint of {task} (its hyper-parameters lack '
            f'{", ".join(missing)})'
        )
    else:
        what = f'a file with the keys {sorted(map(str, data))}'
    raise ValueError(f'{checkpoint} is not a checkpoint of MPMAETask: it is {what}')


def _export_weights_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog='torchgeo-mmearth export-weights',
        description=export_weights.__doc__.splitlines()[0]
        if export_weights.__doc__
        else None,
    )
    parser.add_argument('checkpoint', help='Lightning checkpoint of MPMAETask (.ckpt)')
    parser.add_argument('out', help='file to write (.pth)')
    parser.add_argument(
        '--overwrite', action='store_true', help='replace OUT if it exists'
    )
    args = parser.parse_args(argv)
    try:
        check_new_output(args.out, args.overwrite)
        path = export_weights(args.checkpoint, args.out, overwrite=True)
    except KeyboardInterrupt:
        return report_interrupted(
            f'nothing was written to {args.out}',
            'To export again',
            command_line('export-weights', argv),
        )
    except USER_ERRORS as error:
        return report_error(error)
    print(f'encoder weights written to {path}')
    return 0


def _overview() -> str:
    """What ``torchgeo-mmearth --help`` prints: every subcommand, a line each."""
    lines = [
        'usage: torchgeo-mmearth [--debug] COMMAND [ARGS ...]',
        '       torchgeo-mmearth --help | --version',
        '',
        'MMEarth for TorchGeo: pretrain, evaluate and apply MMEarth encoders.',
        '',
        "TorchGeo's commands (LightningCLI; configs name the plugin's classes):",
        *(f'  {name:16}{text}' for name, text in _LIGHTNING_COMMANDS.items()),
        '',
        'commands of torchgeo-mmearth:',
        *(f'  {name:16}{text}' for name, text in _COMMANDS.items()),
        '',
        'options:',
        f'  {"-h, --help":16}show this list and exit',
        f'  {"--version":16}print the versions of torchgeo-mmearth and TorchGeo',
        f'  {"--debug":16}show the full traceback of an error (also',
        f'  {"":16}TORCHGEO_MMEARTH_DEBUG=1)',
        '',
        'Run torchgeo-mmearth COMMAND --help for the options of a command, e.g.',
        'torchgeo-mmearth fit --help.',
    ]
    return '\n'.join(lines)


def _version() -> str:
    """``torchgeo-mmearth <version> (torchgeo <version>)``."""
    version = importlib.metadata.version
    return f'torchgeo-mmearth {version("torchgeo-mmearth")} (torchgeo {version("torchgeo")})'


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``torchgeo-mmearth`` command.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for a mistake (one ``error:`` line on stderr), 130
        when interrupted, 128 + the signal's number when SIGTERM or SIGUSR1
        stopped a Lightning command (143, 138).
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = False
    while argv[:1] == ['--debug']:
        argv.pop(0)
        debug = True
    if not argv or argv[0] in ('-h', '--help'):
        print(_overview())
        return 0
    if argv[0] == '--version':
        print(_version())
        return 0
    command = argv[0]
    with debug_mode(debug):
        if command in _COMMANDS:
            try:
                return _run(command, argv[1:])
            except USER_ERRORS as error:  # those the subcommand leaves to us
                return report_error(error)
        if command in _LIGHTNING_COMMANDS or command.startswith('-'):
            if args is None:
                # LightningCLI reads sys.argv itself from the console script:
                # passing it explicitly makes Lightning warn that args is meant
                # for calls from Python.
                sys.argv[1:] = argv
            try:
                return _lightning(None if args is None else argv)
            except (CommandLineError, RunError) as error:
                return report_error(error)
        return report_error(
            CommandLineError(
                f'unknown command {command!r}; the commands are '
                f'{", ".join([*_LIGHTNING_COMMANDS, *_COMMANDS])} '
                '(torchgeo-mmearth --help describes them)'
            )
        )


def _run(command: str, argv: list[str]) -> int:
    """Run one of the plugin's subcommands."""
    if command == 'export-weights':
        return _export_weights_main(argv)
    if command == 'build-corpus':
        from .corpus.cli import main as build_corpus

        return build_corpus(argv)
    if command == 'shard':
        from .corpus.shards import main as shard

        return shard(argv)
    if command == 'probe':
        from .evaluation.cli import main as probe

        return probe(argv)
    from .inference.cli import main as embed

    return embed(argv)


def _lightning(argv: list[str] | None) -> int:
    """Run TorchGeo's LightningCLI, its mistakes raised as CommandLineError.

    Returns:
        The exit status: 0, or 128 + the signal's number for a run stopped by
        SIGTERM or SIGUSR1.
    """
    import signal
    from unittest import mock

    # Importing the plugin registers its classes with jsonargparse (short class
    # names), its models with timm and smp, and its weights with TorchGeo.
    import torchgeo.main
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from . import datamodules, models, trainers  # noqa: F401

    # Lightning's advertisements for its cloud services say nothing about the run.
    rank_zero = logging.getLogger('lightning.pytorch.utilities.rank_zero')
    tips = _DropTips()
    rank_zero.addFilter(tips)
    try:
        with mock.patch.object(torchgeo.main, 'LightningCLI', _explaining_cli()):
            torchgeo.main.main(argv)
    except SIGTERMException as stopped:
        # CheckpointOnInterrupt's StoppedBySignal holds its status; Lightning's
        # own (SIGTERM outside the training steps) none, which would exit 0.
        return stopped.code if isinstance(stopped.code, int) else 128 + signal.SIGTERM
    finally:
        rank_zero.removeFilter(tips)
    return 0


class _DropTips(logging.Filter):
    """Leave out Lightning's "💡 Tip: ..." lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith('💡 Tip:')


def _explaining_cli() -> 'type[LightningCLI]':
    """LightningCLI whose parsing and instantiation errors are one line each."""
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

    from .trainers import resume_in_version_folder, use_atomic_checkpoints

    class ExplainingCLI(LightningCLI):
        def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
            # Raise parsing errors (to condense them) instead of printing the
            # usage of the whole Trainer and exiting.
            kwargs.setdefault('exit_on_error', False)
            return super().init_parser(**kwargs)

        def parse_arguments(
            self, parser: LightningArgumentParser, args: ArgsType
        ) -> None:
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as error:
                raise CommandLineError(_parsing_error(str(error))) from error
            subcommand = self.config.get('subcommand')
            if subcommand:
                _check_ckpt_path(self.config[subcommand].get('ckpt_path'))

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, MisconfigurationException) as error:
                raise CommandLineError(_instantiation_error(error)) from error

        def before_fit(self) -> None:
            # A resumed run goes on in its version folder, not in a new one.
            resume_in_version_folder(self.trainer, self.config['fit'].get('ckpt_path'))
            # Checkpoints of any task are whole or absent, never torn.
            use_atomic_checkpoints(self.trainer)

    return ExplainingCLI


def _parsing_error(message: str) -> str:
    """A jsonargparse error in brief: the key, the class given and the cause.

    jsonargparse explains a value that fits none of the types a key takes with
    every type tried and the whole value given; the cause is the error of the
    class that was named (``class_path``), or else of the first type tried.
    """
    key = ''
    if match := re.match(r'Parser key "([^"]+)":\s*', message):
        key, message = match.group(1), message[match.end() :]
    indents = re.findall(r'^( *)- ', message, re.MULTILINE)
    if indents:
        indent = min(map(len, indents))
        items = [
            re.split(r'\n\s*Given value', item)[0].strip()
            for item in re.split(rf'^ {{{indent}}}- ', message, flags=re.MULTILINE)[1:]
        ]
        tried = [item for item in items if not item.startswith(_OTHER_TYPES)] or items
        message = next((i for i in tried if i.startswith(_CLASS_PATH)), tried[0])
        if match := re.match(_CLASS_PATH + r" '([^']+)':\s*", message):
            name = match.group(1)
            cause = _parsing_error(message[match.end() :])
            short = name.rpartition('.')[2]
            return f'{key} ({name}): {cause} (--{key}.help {short} lists its options)'
    return f'{key}: {message}' if key else message


def _instantiation_error(error: BaseException) -> str:
    """The error of a config's class itself, named after it.

    jsonargparse raises the error of a class that refused its arguments as the
    cause of its own; the class is that of the first ``__init__`` on the way to
    the innermost error.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == '__init__' and 'self' in frame.f_locals:
            cls = type(frame.f_locals['self']).__name__
            return f'{cls}: {_parsing_error(str(error))}'
    return _parsing_error(str(error))


def _check_ckpt_path(path: str | None) -> None:
    """Refuse a ``--ckpt_path`` that is missing, truncated or no checkpoint.

    A run killed while Lightning wrote ``last.ckpt`` (before torchgeo-mmearth
    wrote checkpoints whole) leaves it empty or truncated; the error names the
    newest readable checkpoint beside it, to resume from instead.

    Raises:
        CommandLineError: naming the flag, the file and the checkpoint to use.
    """
    if not path or path.startswith(_CKPT_PATH_NAMES) or '://' in path:
        return
    from .models.checkpoints import CorruptCheckpointError, load_checkpoint

    cause: Exception | None = None
    if not os.path.isfile(path):
        problem = f'--ckpt_path {path}: no such file'
    elif os.path.getsize(path) == 0:
        problem = f'--ckpt_path {path} is empty (0 bytes)'
    else:
        try:
            load_checkpoint(path, mmap=True)
            return
        except CorruptCheckpointError as error:
            cause = error
            problem = (
                f'--ckpt_path {path} is truncated or not a PyTorch checkpoint '
                f'({error.reason})'
            )
        except (OSError, pickle.UnpicklingError) as error:
            cause = error
            problem = f'--ckpt_path: {error}'
    raise CommandLineError(f'{problem}; {_older_checkpoint(path)}') from cause


def _older_checkpoint(path: str) -> str:
    """The newest readable checkpoint in the folder of *path*, as advice."""
    from .models.checkpoints import load_checkpoint

    folder = Path(path).parent
    given = Path(path).resolve()
    candidates = [
        other
        for other in folder.glob('*.ckpt')
        if other.resolve() != given and other.is_file()
    ]
    for other in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            load_checkpoint(other, mmap=True)
        except (OSError, pickle.UnpicklingError):
            continue
        return f'the newest readable checkpoint in {folder} is {other}: resume with --ckpt_path {other}'
    return f'no other readable checkpoint in {folder}'
