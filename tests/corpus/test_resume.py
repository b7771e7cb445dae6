import hashlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest

from tests.corpus.conftest import build, scene_point

NAME = 'data_test'


class Interrupt(Exception):
    pass


def stop_after(count: int) -> Callable[[int], None]:
    """A hook that interrupts the build once *count* locations are processed."""

    def hook(index: int) -> None:
        if index + 1 == count:
            raise Interrupt

    return hook


def digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }


def arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, 'r') as f:
        return {key: f[key][...] for key in f}


class TestResume:
    def test_interrupted_build_resumes_to_the_same_corpus(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        reference = build(rasters, corpus_data, tmp_path / 'reference')
        assert not reference.resumed

        root = tmp_path / 'interrupted'
        with pytest.raises(Interrupt):
            build(rasters, corpus_data, root, on_tile=stop_after(5))
        folder = root / NAME
        # Segments of 3 locations: the first is committed, the second was lost.
        assert not (folder / f'{NAME}.h5').exists()
        assert sorted(p.name for p in (folder / '.partial').iterdir()) == [
            'build.json',
            'segment_000000.h5',
            'segment_000000.json',
        ]

        seen: list[int] = []
        resumed = build(rasters, corpus_data, root, on_tile=seen.append)
        assert resumed.resumed
        assert seen == [3, 4, 5, 6, 7]  # continued after the last complete segment
        assert not (folder / '.partial').exists()
        assert digests(folder) == digests(tmp_path / 'reference' / NAME)
        a = arrays(folder / f'{NAME}.h5')
        b = arrays(tmp_path / 'reference' / NAME / f'{NAME}.h5')
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert resumed.to_json() == reference.to_json()

    def test_interrupted_assembly(
        self,
        rasters: Path,
        corpus_data: ModuleType,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from torchgeo_mmearth.corpus.writer import CorpusWriter

        def crash(*args: object) -> None:
            raise Interrupt

        with monkeypatch.context() as patch:
            patch.setattr(CorpusWriter, '_assemble', crash)
            with pytest.raises(Interrupt):
                build(rasters, corpus_data, tmp_path / 'a')
        seen: list[int] = []
        build(rasters, corpus_data, tmp_path / 'a', on_tile=seen.append)
        assert seen == []  # every segment was complete: only the assembly reran
        build(rasters, corpus_data, tmp_path / 'b')
        assert digests(tmp_path / 'a' / NAME) == digests(tmp_path / 'b' / NAME)

    def test_torn_segment_is_discarded(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        with pytest.raises(Interrupt):
            build(rasters, corpus_data, tmp_path, on_tile=stop_after(4))
        partial = tmp_path / NAME / '.partial'
        # A crash between the two renames of a segment, and a temporary file.
        (partial / 'segment_000001.h5').write_bytes(b'torn')
        (partial / '.segment_000001.json.tmp').write_text('{')
        report = build(rasters, corpus_data, tmp_path)
        assert report.tiles_written == 5

    def test_other_inputs_refuse_to_resume(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        with pytest.raises(Interrupt):
            build(rasters, corpus_data, tmp_path, on_tile=stop_after(4))
        with pytest.raises(ValueError, match=r'partial build of .* with other inputs'):
            build(rasters, corpus_data, tmp_path, tile_size=8)
        report = build(rasters, corpus_data, tmp_path, tile_size=8, overwrite=True)
        assert not report.resumed and report.tiles_written == 5


class TestOverwrite:
    def test_refuses_to_overwrite(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        locations = [scene_point(corpus_data, 30, 30)]
        build(rasters, corpus_data, tmp_path, locations=locations, splits=(1, 0, 0))
        before = digests(tmp_path / NAME)
        with pytest.raises(
            FileExistsError, match=r'data_test\.h5 already exists.*overwrite=True'
        ):
            build(
                rasters,
                corpus_data,
                tmp_path,
                locations=locations * 2,
                splits=(1, 0, 0),
            )
        assert digests(tmp_path / NAME) == before
        report = build(
            rasters,
            corpus_data,
            tmp_path,
            locations=[*locations, scene_point(corpus_data, 40, 40, 'B')],
            splits=(1, 0, 0),
            overwrite=True,
        )
        assert report.tiles_written == 2
        with h5py.File(tmp_path / NAME / f'{NAME}.h5') as f:
            assert len(f['metadata']) == 2
