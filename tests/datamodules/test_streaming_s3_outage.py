"""Shards on S3: a planted pickle is refused, a short outage is ridden out."""

import socket
import threading
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from torchgeo_mmearth.datasets import MMEarth, StreamingMMEarth

from ..datasets.test_streaming_trust import plant_pickle
from .test_streaming_s3 import endpoint, upload

__all__ = ['endpoint']  # the S3 server fixture, shared

# Reset, not closed: the peer sees the connection fail, as when a server dies.
_RESET = socket.SO_LINGER, (1).to_bytes(4, 'little') + (0).to_bytes(4, 'little')


class Relay:
    """A TCP relay to the S3 server that can go down and come back on its port.

    While down, connections are refused and those open are reset, as when an
    endpoint restarts; the server's state (the bucket) is kept.
    """

    def __init__(self, target: str) -> None:
        self.target = ('127.0.0.1', int(target.rsplit(':', 1)[1]))
        self.port = 0
        self.connections: list[socket.socket] = []
        #: Connections accepted so far.
        self.accepted = 0
        self.lock = threading.Lock()
        self.up()

    @property
    def url(self) -> str:
        """The endpoint of the relay."""
        return f'http://127.0.0.1:{self.port}'

    def up(self) -> None:
        """Accept connections (again) on the relay's port."""
        self.listener = socket.create_server(('127.0.0.1', self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(
            target=self._accept, args=(self.listener,), daemon=True
        ).start()

    def down(self, seconds: float) -> threading.Timer:
        """Refuse and reset every connection for *seconds*."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                connection.setsockopt(socket.SOL_SOCKET, *_RESET)
                connection.close()
            self.connections = []
        timer = threading.Timer(seconds, self.up)
        timer.start()
        return timer

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.connections += [client, server]
                self.accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pipe, args=(source, sink), daemon=True
                ).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_planted_pickle_on_s3_is_refused(
    mmearth_shards: Path, endpoint: str, tmp_path: Path
) -> None:
    marker = tmp_path / 'ran'
    planted = plant_pickle(mmearth_shards, tmp_path / 'planted', marker)
    input_dir = upload(planted, endpoint)
    with pytest.raises(
        ValueError, match="field 'tile_id' uses litdata serializer"
    ) as e:
        StreamingMMEarth(
            input_dir,
            cache_dir=str(tmp_path / 'cache'),
            storage_options={'endpoint_url': endpoint},
        )
    # Named by its address, with litdata's copy that was checked.
    assert str(e.value).startswith(f'{input_dir}/train/index.json (its copy ')
    assert not marker.exists()


@pytest.mark.slow
def test_an_outage_mid_iteration_is_ridden_out(
    mmearth_root: Path, endpoint: str, tmp_path: Path
) -> None:
    """The endpoint goes away for 1.5 s as iteration starts: every tile comes."""
    from torchgeo_mmearth.corpus import shard_corpus

    # One tile a chunk: most chunks are downloaded after the outage began.
    shards = tmp_path / 'shards'
    shard_corpus(
        mmearth_root,
        'MMEarth64',
        shards,
        splits=['train'],
        chunk_bytes='300KB',
        num_workers=1,
        progress=False,
    )
    relay = Relay(endpoint)
    dataset = StreamingMMEarth(
        upload(shards, endpoint),
        cache_dir=str(tmp_path / 'cache'),
        storage_options={'endpoint_url': relay.url},
    )
    # The worker starts, then asks for its first chunks while the endpoint is down.
    samples = iter(DataLoader(dataset, batch_size=None, num_workers=1))
    restart = relay.down(1.5)
    accepted = relay.accepted
    tiles = [sample['tile_id'] for sample in samples]
    restart.join()
    # Chunks were downloaded after the outage, on new connections.
    assert relay.accepted > accepted
    split = MMEarth(mmearth_root, 'MMEarth64', 'train')
    assert sorted(tiles) == sorted(split[i]['tile_id'] for i in range(len(split)))
