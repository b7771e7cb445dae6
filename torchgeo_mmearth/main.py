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
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._atomic import atomic_path
from ._interrupt import command_line, report_interrupted

__all__ = ['export_weights', 'main']


def export_weights(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]
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
            :class:`~torchgeo_mmearth.trainers.MPMAETask`.
        out: the file to write; it appears only once complete.

    Returns:
        The written file.

    Raises:
        ValueError: if *checkpoint* is not an MPMAETask checkpoint.
    """
    # Imported here: the other subcommands and --help do not need torch.
    import torch

    data: dict[str, Any] = torch.load(checkpoint, map_location='cpu', weights_only=True)
    hparams = data.get('hyper_parameters', {})
    if 'state_dict' not in data or 'model' not in hparams:
        raise ValueError(
            f'{checkpoint} is not a Lightning checkpoint of MPMAETask '
            "(needs 'state_dict' and hyper_parameters['model'])"
        )
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
        'in_chans': hparams.get('in_channels'),
        'bands': corpus.get('bands'),
        'patch_size': hparams.get('patch_size'),
        'input_size': hparams.get('input_size'),
        'corpus': corpus.get('subset'),
        'ssl_method': 'mp-mae',
        'target_modalities': hparams.get('target_modalities'),
        'epoch': data.get('epoch'),
        'global_step': data.get('global_step'),
    }
    out = Path(out)
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


def _export_weights_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog='torchgeo-mmearth export-weights',
        description=export_weights.__doc__.splitlines()[0]
        if export_weights.__doc__
        else None,
    )
    parser.add_argument('checkpoint', help='Lightning checkpoint of MPMAETask (.ckpt)')
    parser.add_argument('out', help='file to write (.pth)')
    args = parser.parse_args(argv)
    try:
        path = export_weights(args.checkpoint, args.out)
    except KeyboardInterrupt:
        return report_interrupted(
            f'nothing was written to {args.out}',
            'To export again',
            command_line('export-weights', argv),
        )
    print(f'encoder weights written to {path}')
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``torchgeo-mmearth`` command.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ['export-weights']:
        return _export_weights_main(argv[1:])
    if argv[:1] == ['build-corpus']:
        from .corpus.cli import main as build_corpus

        return build_corpus(argv[1:])
    if argv[:1] == ['shard']:
        from .corpus.shards import main as shard

        return shard(argv[1:])
    if argv[:1] == ['probe']:
        from .evaluation.cli import main as probe

        return probe(argv[1:])
    if argv[:1] == ['embed']:
        from .inference.cli import main as embed

        return embed(argv[1:])

    # Importing the plugin registers its classes with jsonargparse (short class
    # names), its models with timm and smp, and its weights with TorchGeo.
    import torchgeo.main

    from . import datamodules, models, trainers  # noqa: F401

    # From the console script, let LightningCLI read sys.argv itself: passing it
    # explicitly makes Lightning warn that args is meant for calls from Python.
    torchgeo.main.main(None if args is None else argv)
    return 0
