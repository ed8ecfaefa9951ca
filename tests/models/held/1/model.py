"""Test-only Triton Python-backend model "held": answers an all-foreground mask, but holds every call while a
file the test controls exists, and records each call it starts, so a test knows a call is inside Triton.

Its config.pbtxt is written per test by tests/held_model.py, with the "gate_dir" parameter naming the folder
that holds the "hold" switch and the "entered" record.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# How often a held call looks at the switch; only the model polls, the test waits on what it records.
_POLL_S = 0.05


class TritonPythonModel:
    """Holds while <gate_dir>/hold exists; appends one line per request to <gate_dir>/entered first."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self._gate = Path(config["parameters"]["gate_dir"]["string_value"])

    def execute(self, requests: list[Any]) -> list[Any]:
        with (self._gate / "entered").open("a") as record:
            record.write("".join(f"{request.request_id()}\n" for request in requests))
        while (self._gate / "hold").exists():
            time.sleep(_POLL_S)
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            mask = np.full(images.shape[:3], 255, dtype=np.uint8)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("mask", mask)]))
        return responses
