"""A real S3-protocol server for the tests: moto's standalone server as a subprocess on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools.triton_launcher import free_port

REGION = "us-east-1"
# moto accepts any credentials; naming them in the URL keeps obstore from looking for real ones (instance
# metadata and the like) and exercises the URL's credential parameters.
CREDENTIALS = "access_key_id=test&secret_access_key=test"
START_TIMEOUT_S = 60.0


@dataclass
class S3Server:
    """moto_server on a free port; `storage_url` names a new, empty bucket on it."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path) -> S3Server:
        """Start the server and wait (polling its port) until it accepts connections."""
        port = free_port()
        log = (workdir / "moto.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        server = cls(process, port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}; see {workdir / 'moto.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"moto server did not listen on {port} within {START_TIMEOUT_S}s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server by its pid: SIGTERM, then SIGKILL if it lingers."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def create_bucket(self) -> str:
        """A new, empty bucket of a unique name (moto takes an unsigned CreateBucket)."""
        bucket = f"removai-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        return bucket

    def storage_url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&region={REGION}&{CREDENTIALS}"
