"""The streaming datamodule reads shards from an S3 endpoint that the test starts."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from torchgeo_mmearth.datamodules import MMEarthStreamingDataModule
from torchgeo_mmearth.datasets import MMEarth

from .test_streaming_resume import assert_same_run, fit

boto3 = pytest.importorskip('boto3')
moto_server = pytest.importorskip('moto.server')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3 server (moto) on 127.0.0.1, with credentials valid only here."""
    for name, value in {
        'AWS_ACCESS_KEY_ID': 'testing',
        'AWS_SECRET_ACCESS_KEY': 'testing',
        'AWS_DEFAULT_REGION': 'us-east-1',
        # Nothing may reach the internet: no instance metadata or config lookups.
        'AWS_EC2_METADATA_DISABLED': 'true',
        'AWS_CONFIG_FILE': '/dev/null',
        'AWS_SHARED_CREDENTIALS_FILE': '/dev/null',
        'LITDATA_DISABLE_VERSION_CHECK': '1',
        # The endpoint is plain HTTP: litdata's obstore downloads need this.
        'AWS_ALLOW_HTTP': 'true',
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port)
    server.start()
    try:
        yield f'http://127.0.0.1:{port}'
    finally:
        server.stop()


def upload(shards: Path, endpoint: str) -> str:
    """Copy a shard folder to a bucket of the endpoint; return its S3 address."""
    client = boto3.client('s3', endpoint_url=endpoint)
    client.create_bucket(Bucket='corpora')
    for path in shards.rglob('*'):
        if path.is_file():
            key = f'mmearth64/{path.relative_to(shards).as_posix()}'
            client.upload_file(str(path), 'corpora', key)
    listed = client.list_objects_v2(Bucket='corpora')['Contents']
    assert any(o['Key'].endswith('train/index.json') for o in listed)
    return 's3://corpora/mmearth64'


def test_fit_batches_from_an_s3_endpoint(
    mmearth_root: Path, mmearth_shards: Path, endpoint: str, tmp_path: Path
) -> None:
    dm = MMEarthStreamingDataModule(
        upload(mmearth_shards, endpoint),
        batch_size=2,
        num_workers=1,
        cache_dir=str(tmp_path / 'cache'),
        storage_options={'endpoint_url': endpoint},
    )
    dm.setup('fit')
    batches = list(dm.train_dataloader())
    tiles = sorted(t for batch in batches for t in batch['tile_id'])
    split = MMEarth(mmearth_root, 'MMEarth64', 'train')
    assert tiles == sorted(split[i]['tile_id'] for i in range(len(split)))
    by_id = {split[i]['tile_id']: split[i] for i in range(len(split))}
    batch = batches[0]
    for j, tile in enumerate(batch['tile_id']):
        assert torch.equal(batch['image_sentinel2'][j], by_id[tile]['image_sentinel2'])
    assert set(by_id) == set(tiles)
    # The chunks came over HTTP from the endpoint into the cache.
    assert any(p.suffix == '.bin' for p in (tmp_path / 'cache').rglob('*'))


@pytest.mark.slow
def test_resume_mid_epoch_from_an_s3_endpoint(
    mmearth_shards: Path, endpoint: str, tmp_path: Path
) -> None:
    # Resumed mid-epoch (with another chunk cache): the batches, steps and
    # weights of an uninterrupted run, over the next epochs too.
    input_dir = upload(mmearth_shards, endpoint)
    options = {'storage_options': {'endpoint_url': endpoint}}
    every_step = ModelCheckpoint(
        dirpath=tmp_path / 'steps', every_n_train_steps=1, save_top_k=-1
    )
    uninterrupted = fit(input_dir, tmp_path / 'a', 1, callbacks=[every_step], **options)
    (saved,) = (tmp_path / 'steps').glob('*step=4.ckpt')
    resumed = fit(input_dir, tmp_path / 'b', 1, ckpt_path=saved, **options)
    assert_same_run(resumed, uninterrupted, 4)
