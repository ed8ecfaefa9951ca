"""A real S3-protocol server for the tests: moto's server (ThreadedMotoServer) on 127.0.0.1, port 0."""

from __future__ import annotations

import urllib.request
import uuid
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# moto accepts any credentials; naming them in the URL keeps obstore from looking for real ones (instance
# metadata and the like) and exercises the URL's credential parameters.
CREDENTIALS = "access_key_id=test&secret_access_key=test"


class _MotoServer(ThreadedMotoServer):
    """moto's server in a thread of this process, whose stop also closes the listening socket: a stopped store
    refuses connections (as a stopped process would) instead of leaving them unanswered."""

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.server_close()
            self._server = None


@dataclass
class S3Server:
    """moto's S3 server on a port the kernel picks; `storage_url` names a new, empty bucket on it."""

    server: ThreadedMotoServer
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls) -> S3Server:
        """Start the server; it accepts connections once this returns (the socket is bound before)."""
        server = _MotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        return cls(server, server.get_host_and_port()[1])

    def stop(self) -> None:
        """Stop serving and close the socket; stopping again does nothing."""
        self.server.stop()

    def create_bucket(self) -> str:
        """A new, empty bucket of a unique name (moto takes an unsigned CreateBucket)."""
        bucket = f"removai-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        return bucket

    def storage_url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&region={REGION}&{CREDENTIALS}"
