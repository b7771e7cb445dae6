"""Where MMEarthWeights come from: URL, hub cache, local file or folder, export.

One test per row of the table in docs/installation.md ("Weights offline and on
disk"), and the errors of a failed download. Official-format files are written by
``official_file``; "offline" is a URL on a closed local port, so any attempt to
download fails at once.
"""

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from torchgeo_mmearth._compat import ClassificationTask
from torchgeo_mmearth.models import (
    WEIGHTS_DIR_VARIABLE,
    CheckpointDownloadError,
    MMEarthWeights,
)

from .test_weights import expected_state_dict, official_file

pytestmark = pytest.mark.usefixtures('single_thread')

HEADLINE = MMEarthWeights.S2_MP_MAE
FOLDER = HEADLINE.meta['checkpoint']
NAME = HEADLINE.meta['model']


def closed_port() -> int:
    """A local port that nothing listens on."""
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        return int(listener.getsockname()[1])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> str:
    """The headline member's URL points where no server answers."""
    url = f'http://127.0.0.1:{closed_port()}/g23YOnaaTp/{FOLDER}/checkpoint-199.pth'
    monkeypatch.setattr(HEADLINE.value, 'url', url)
    monkeypatch.delenv(WEIGHTS_DIR_VARIABLE, raising=False)
    return url


def cache_file() -> Path:
    return Path(
        torch.hub.get_dir(), 'checkpoints', f'mmearth-{FOLDER}-checkpoint-199.pth'
    )


def assert_equal(state_dict: dict[str, Tensor], path: Path) -> None:
    expected = expected_state_dict(path, NAME)
    assert state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state_dict[key], value), key


class TestSources:
    def test_url(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
        assert_equal(HEADLINE.get_state_dict(progress=False), path)
        assert cache_file().read_bytes() == path.read_bytes()

    def test_hub_cache(self, tmp_path: Path, offline: str) -> None:
        cache_file().parent.mkdir(parents=True)
        path = official_file(cache_file())
        assert_equal(HEADLINE.get_state_dict(), path)

    def test_file_argument(self, tmp_path: Path, offline: str) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        assert_equal(HEADLINE.get_state_dict(str(path)), path)
        assert_equal(HEADLINE.get_state_dict(model_dir=path), path)
        assert not cache_file().exists()

    def test_folder_argument(self, tmp_path: Path, offline: str) -> None:
        (tmp_path / FOLDER).mkdir()
        path = official_file(tmp_path / FOLDER / 'checkpoint-199.pth')
        assert_equal(HEADLINE.get_state_dict(tmp_path), path)

    def test_folder_variable(
        self, tmp_path: Path, offline: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / FOLDER).mkdir()
        path = official_file(tmp_path / FOLDER / 'checkpoint-199.pth')
        monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path))
        assert_equal(HEADLINE.get_state_dict(), path)
        # What a TorchGeo user writes, on a node without network.
        task = ClassificationTask(
            model=NAME, weights=HEADLINE, in_channels=12, num_classes=3
        )
        state = task.model.state_dict()
        for key, value in expected_state_dict(path, NAME).items():
            assert torch.equal(state[key], value), key

    def test_variable_without_the_file_still_downloads(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
        monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path / 'empty'))
        assert_equal(HEADLINE.get_state_dict(progress=False), path)


class TestDownloadErrors:
    def test_offline(self, offline: str) -> None:
        with pytest.raises(CheckpointDownloadError) as caught:
            HEADLINE.get_state_dict(progress=False)
        published = f'{FOLDER}/checkpoint-199.pth'
        assert str(caught.value) == (
            f'could not download {offline}: [Errno 111] Connection refused. To load '
            f'a copy of {published} from disk instead, put it at {cache_file()}, or '
            f'set {WEIGHTS_DIR_VARIABLE} to a folder holding {published}, or pass '
            'its path: MMEarthWeights.S2_MP_MAE.get_state_dict('
            "'/path/to/checkpoint-199.pth')"
        )
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
        assert not cache_file().parent.exists() or not any(
            cache_file().parent.iterdir()
        )

    def test_offline_with_the_variable_set(
        self, tmp_path: Path, offline: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path))
        with pytest.raises(CheckpointDownloadError) as caught:
            HEADLINE.get_state_dict(progress=False)
        published = f'{FOLDER}/checkpoint-199.pth'
        # Which folder was looked in, rather than advice to set the variable.
        assert str(caught.value) == (
            f'could not download {offline}: [Errno 111] Connection refused. '
            f'{WEIGHTS_DIR_VARIABLE} is set to {tmp_path}, but '
            f'{tmp_path / published} does not exist. To load a copy of {published} '
            f'from disk instead, put it there or at {cache_file()}, or pass its '
            'path: MMEarthWeights.S2_MP_MAE.get_state_dict('
            "'/path/to/checkpoint-199.pth')"
        )

    def test_offline_in_torchgeos_task(self, offline: str) -> None:
        # One error, not URLError chained under another traceback.
        with pytest.raises(CheckpointDownloadError, match='Connection refused') as e:
            ClassificationTask(model=NAME, weights=HEADLINE, in_channels=12)
        assert e.value.__cause__ is None and e.value.__suppress_context__

    def test_http_error(self, served: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(HEADLINE.value, 'url', served + '/missing.pth')
        with pytest.raises(CheckpointDownloadError, match='HTTP 404 Not Found'):
            HEADLINE.get_state_dict(progress=False)

    def test_truncated_download_leaves_nothing(
        self, served: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(HEADLINE.value, 'url', served + '/truncated.pth')
        with pytest.raises(
            CheckpointDownloadError, match=r'stopped after \d+ of \d+ bytes'
        ):
            HEADLINE.get_state_dict(progress=False)
        assert list(cache_file().parent.iterdir()) == []


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server: 404 for most paths, a cut transfer for /truncated.pth."""
    body = official_file(tmp_path / 'checkpoint-199.pth').read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith('/truncated.pth'):
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
