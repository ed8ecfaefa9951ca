"""A model repository with the test-only "held" model, whose calls wait while the test holds them.

Fault tests use it to know that a call is inside Triton before they kill it, instead of sleeping and hoping.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.waiting import eventually

MODELS = Path(__file__).resolve().parent / "models"
NAME = "held"
SIZE = 256

_CONFIG = """name: "held"
backend: "python"
max_batch_size: 4
input [ {{ name: "image", data_type: TYPE_UINT8, dims: [ {size}, {size}, 3 ] }} ]
output [ {{ name: "mask", data_type: TYPE_UINT8, dims: [ {size}, {size} ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ }}
parameters [ {{ key: "gate_dir", value: {{ string_value: "{gate}" }} }} ]
"""


@dataclass(frozen=True)
class HeldModel:
    """The repository (serve it with TritonServer) and the switch its calls wait on."""

    repository: Path
    gate: Path

    @classmethod
    def create(cls, root: Path) -> HeldModel:
        repository, gate = root / "models", root / "gate"
        gate.mkdir(parents=True)
        shutil.copytree(MODELS / NAME, repository / NAME, ignore=shutil.ignore_patterns("__pycache__"))
        (repository / NAME / "config.pbtxt").write_text(_CONFIG.format(size=SIZE, gate=gate))
        return cls(repository, gate)

    def hold(self) -> None:
        """From now on, calls wait inside Triton until release()."""
        (self.gate / "hold").touch()

    def release(self) -> None:
        (self.gate / "hold").unlink(missing_ok=True)

    def entered(self) -> int:
        """How many requests the model has started on so far."""
        try:
            return len((self.gate / "entered").read_text().splitlines())
        except FileNotFoundError:
            return 0

    async def wait_entered(self, count: int, timeout_s: float = 120.0) -> None:
        """Return once the model has started on at least `count` requests in all."""
        await eventually(lambda: self.entered() >= count, timeout_s, message=f"{count} requests inside the model")
