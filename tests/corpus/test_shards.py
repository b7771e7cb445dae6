import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from torchgeo_mmearth.corpus import shards
from torchgeo_mmearth.corpus.shards import folder_bytes, shard_corpus
from torchgeo_mmearth.datasets import MMEarth, StreamingMMEarth
from torchgeo_mmearth.main import main


def test_cli_reports_and_never_overwrites_unless_asked(
    mmearth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'shards'
    args = ['shard', '--root', str(mmearth_root), '--subset', 'MMEarth64']
    args += ['--out', str(out), '--workers', '2']
    assert main([*args, '--compression', 'zstd:1']) == 0
    printed = capsys.readouterr()
    report = printed.out
    # The report alone on stdout; litdata's progress bars and no chatter on stderr.
    assert (
        report.startswith(f'shards written to {out}') and 'lightning.ai' not in report
    )
    assert "split 'train': 6 tiles" in printed.err and 'Progress' in printed.err
    assert 'Worker' not in printed.err
    h5 = mmearth_root / 'data_1M_v001_64' / 'data_1M_v001_64.h5'
    assert (
        f'bytes on disk: {folder_bytes(out):,} (HDF5: {h5.stat().st_size:,}' in report
    )
    assert 'tiles: 10 (train 6, val 2, test 2)' in report
    manifest = json.loads((out / 'mmearth_shards.json').read_text())
    assert manifest['compression'] == 'zstd:1' and manifest['tile_size'] == 64
    assert not (out.parent / 'shards.partial').exists()

    assert main(args) == 2
    assert (
        capsys.readouterr().err
        == f'error: {out} exists; add --overwrite to replace it\n'
    )
    assert main([*args, '--overwrite', '--no-progress']) == 0
    assert capsys.readouterr().err == ''
    manifest = json.loads((out / 'mmearth_shards.json').read_text())
    assert manifest['compression'] == shards.DEFAULT_COMPRESSION


def test_interrupted_conversion_resumes(
    mmearth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litdata

    out = tmp_path / 'shards'
    optimize = litdata.optimize
    calls: list[str] = []

    def interrupted(**kwargs: object) -> None:
        calls.append(str(kwargs['output_dir']))
        if str(kwargs['output_dir']).endswith('val'):
            raise KeyboardInterrupt
        optimize(**kwargs)

    monkeypatch.setattr(litdata, 'optimize', interrupted)
    with pytest.raises(KeyboardInterrupt):
        shard_corpus(mmearth_root, 'MMEarth64', out, num_workers=1, progress=False)
    partial = tmp_path / 'shards.partial'
    assert not out.exists() and (partial / 'train' / 'index.json').is_file()
    train_chunks = {p: p.stat().st_mtime_ns for p in (partial / 'train').glob('*.bin')}

    monkeypatch.setattr(litdata, 'optimize', optimize)
    report = shard_corpus(mmearth_root, 'MMEarth64', out, num_workers=1, progress=False)
    assert report.resumed_splits == ('train',)
    assert not partial.exists()
    # The finished split was kept as written, not converted again.
    assert {out / 'train' / p.name: t for p, t in train_chunks.items()} == {
        p: p.stat().st_mtime_ns for p in (out / 'train').glob('*.bin')
    }
    for split in ('train', 'val', 'test'):
        streamed = StreamingMMEarth(out, split, cache_dir=str(tmp_path / 'cache'))
        hdf5 = MMEarth(mmearth_root, 'MMEarth64', split)
        assert sorted(s['tile_id'] for s in streamed) == sorted(
            hdf5[i]['tile_id'] for i in range(len(hdf5))
        )

    # Other arguments than the interrupted run's: refused, naming the folder.
    partial.mkdir()
    (partial / '.progress.json').write_text(
        json.dumps({'arguments': {'compression': 'zstd:9'}, 'done': ['train']})
    )
    with pytest.raises(ValueError, match='interrupted conversion with other arguments'):
        shard_corpus(mmearth_root, 'MMEarth64', out, overwrite=True, progress=False)


def test_errors(mmearth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no split 'holdout'"):
        shard_corpus(mmearth_root, 'MMEarth64', tmp_path / 'x', splits=['holdout'])


def test_corrupt_corpus_is_one_line(
    mmearth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged row: the file, dataset and row, and the folder kept to resume."""
    import h5py

    folder = mmearth_root / 'data_1M_v001_64'
    root = tmp_path / 'root'
    shutil.copytree(folder, root / folder.name)
    [h5] = (root / folder.name).glob('*.h5')
    with h5py.File(h5) as file:
        sentinel2 = file['sentinel2'].id
        chunk = sentinel2.get_chunk_info(sentinel2.get_num_chunks() - 1)
    data = bytearray(h5.read_bytes())
    start, stop = chunk.byte_offset + 100, chunk.byte_offset + chunk.size - 100
    data[start:stop] = bytes(stop - start)
    h5.write_bytes(data)
    out = tmp_path / 'shards'
    args = ['shard', '--root', str(root), '--subset', 'MMEarth64', '--out', str(out)]
    assert main([*args, '--workers', '1', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f'error: {h5}: cannot read row ')
    assert "of dataset 'sentinel2'" in err and 'corrupt or truncated' in err
    assert f'What was converted is kept in {out}.partial: run the same ' in err
    assert (tmp_path / 'shards.partial').is_dir() and not out.exists()


def process_group() -> set[int]:
    """The processes of this process's group (its forked descendants among them)."""
    group = set()
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == os.getpgid(0):
                    group.add(int(entry.name))
    return group


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='lists processes in /proc')
def test_failed_write_leaves_no_processes(
    mmearth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk in a worker: litdata's workers and their helpers all end."""
    from litdata.streaming.writer import BinaryWriter

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(BinaryWriter, 'write_chunk', full_disk)
    before = process_group()
    with pytest.raises(RuntimeError, match='No space left on device'):
        shard_corpus(
            mmearth_root,
            'MMEarth64',
            tmp_path / 'shards',
            splits=['train'],
            num_workers=2,
            progress=False,
            start_method='fork',
        )
    assert process_group() - before == set()
