"""Shards that run no code and are checked: serialisers, checksums, --verify."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from torchgeo_mmearth.datasets import StreamingMMEarth
from torchgeo_mmearth.datasets.streaming import MANIFEST, file_sha256
from torchgeo_mmearth.main import main


class Payload:
    """An object whose unpickling creates the folder *marker*."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        """Unpickled as a call of ``os.makedirs(marker)``."""
        return os.makedirs, (self.marker,)


def plant_pickle(shards: Path, out: Path, marker: Path) -> Path:
    """A copy of *shards* whose 'train' tile id is a pickle that creates *marker*.

    The manifest's checksums are those of the planted files, as whoever planted
    them would write them.
    """
    from litdata.streaming.writer import BinaryWriter

    shutil.copytree(shards, out)
    manifest = json.loads((out / MANIFEST).read_text())
    split = out / 'train'
    shutil.rmtree(split)
    item: dict[str, object] = {
        name: bytes(np.zeros(spec['shape'], spec['dtype']).nbytes)
        for name, spec in manifest['modalities'].items()
    }
    item.update(tile_id=Payload(str(marker)), s2_type=0, row=np.zeros(1, np.int64))
    writer = BinaryWriter(str(split), chunk_bytes='64MB')
    writer[0] = item
    writer.done()
    writer.merge()
    manifest['checksums']['train'] = {
        path.name: file_sha256(path) for path in split.iterdir()
    }
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_a_planted_pickle_is_refused_before_decoding(
    mmearth_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / 'ran'
    planted = plant_pickle(mmearth_shards, tmp_path / 'planted', marker)
    index = planted / 'train' / 'index.json'
    with pytest.raises(
        ValueError, match="field 'tile_id' uses litdata serializer"
    ) as e:
        StreamingMMEarth(planted, cache_dir=str(tmp_path / 'cache'))
    assert str(e.value).startswith(
        f"{index}: field 'tile_id' uses litdata serializer 'pickle'"
    )
    assert not marker.exists()
    assert main(['shard', '--verify', str(planted)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {index}: field 'tile_id' uses litdata serializer 'pickle'"
    )
    assert len(err.splitlines()) == 1 and not marker.exists()
    # The payload is live: litdata's own reader runs it on the first item.
    from litdata import StreamingDataset

    StreamingDataset(str(planted / 'train'), cache_dir=str(tmp_path / 'c2'))[0]
    assert marker.is_dir()


def test_corrupt_chunk_is_named_when_read_and_by_verify(
    mmearth_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((mmearth_shards / MANIFEST).read_text())
    for split, files in manifest['checksums'].items():
        listed = json.loads((mmearth_shards / split / 'index.json').read_text())
        assert set(files) == {c['filename'] for c in listed['chunks']} | {'index.json'}
        for name, digest in files.items():
            assert file_sha256(mmearth_shards / split / name) == digest
    assert main(['shard', '--verify', str(mmearth_shards)]) == 0
    files = sum(len(files) for files in manifest['checksums'].values())
    assert capsys.readouterr().out == (
        f'OK: {files} files match the checksums of {mmearth_shards / MANIFEST}\n'
    )

    shards = tmp_path / 'shards'
    shutil.copytree(mmearth_shards, shards)
    chunk = max((shards / 'val').glob('*.bin'))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit, inside a tile
    chunk.write_bytes(data)
    streamed = StreamingMMEarth(shards, 'val', cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(OSError, match='corrupt or changed') as e:
        list(streamed)
    assert str(e.value).startswith(f'{chunk}: SHA-256 ')
    unchecked = StreamingMMEarth(
        shards, 'val', cache_dir=str(tmp_path / 'c2'), verify_chunks=False
    )
    assert len(list(unchecked)) == len(unchecked)
    assert main(['shard', '--verify', str(shards)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {chunk}: SHA-256 ')

    # Shards written before checksums (version 2): read with a warning, and
    # --verify says that it cannot check them.
    del manifest['checksums']
    manifest['version'] = 2
    (shards / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match='version 2 shards have no checksums'):
        old = StreamingMMEarth(shards, 'train', cache_dir=str(tmp_path / 'c3'))
    assert len(list(old)) == len(old)
    assert main(['shard', '--verify', str(shards)]) == 1
    assert 'have no checksums' in capsys.readouterr().err
