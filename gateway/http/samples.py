"""Each operation's copyable examples (x-codeSamples): a curl command and a Python script using requests, made
from the operation's own path, parameters and body example; the tests run both against the real stack."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.http.openapi import Operation

Json = dict[str, Any]
# The samples read the key from the environment, never from the command line or the code.
SAMPLE_KEY_VARIABLE = "REMOVAI_API_KEY"
# A local file the upload samples send.
SAMPLE_FILE = "photo.jpg"


def _example_path(op: Operation) -> str:
    path = op.path
    for parameter in op.parameters:
        if parameter["in"] == "path":
            path = path.replace(f"{{{parameter['name']}}}", str(parameter["example"]))
    query = [f"{p['name']}={p['example']}" for p in op.parameters if p["in"] == "query" and "example" in p]
    return path + ("?" + "&".join(query) if query else "")


def code_samples(op: Operation, base_url: str) -> list[Json]:
    """A copyable curl command and Python (requests) script; the tests run both against the real stack."""
    url = base_url + _example_path(op)
    curl = ["curl", "-sS", *(["-X", op.method.upper()] if op.method != "get" else []), url]
    python = ["import os", "", "import requests", "", f"response = requests.{op.method}(", f"    {url!r},"]
    if not op.public:
        curl += ["-H", f"X-API-Key: ${SAMPLE_KEY_VARIABLE}"]
        python.append(f"    headers={{'X-API-Key': os.environ[{SAMPLE_KEY_VARIABLE!r}]}},")
    body = op.bodies[0] if op.bodies else None
    if body is not None and body.media_type == "application/json":
        curl += ["-H", "Content-Type: application/json", "-d", json.dumps(body.example)]
        python.append(f"    json={body.example!r},")
    elif body is not None:
        files = [(name, value) for name, value in body.example.items() if isinstance(value, list | bytes)]
        fields = {name: value for name, value in body.example.items() if isinstance(value, str)}
        uploads = [(name, SAMPLE_FILE) for name, _ in files]
        curl += [arg for name, path in uploads for arg in ("-F", f"{name}=@{path}")]
        curl += [arg for name, value in fields.items() for arg in ("-F", f"{name}={value}")]
        python.append(f"    files=[{', '.join(f'({n!r}, open({p!r}, {chr(39)}rb{chr(39)}))' for n, p in uploads)}],")
        python.append(f"    data={fields!r},")
    python += ["    timeout=120,", ")"]
    if op.reply.model is None or op.binary_answer:
        # Binary answers are saved to a file: the one the reply names, else output.bin.
        output = op.reply.output_file or ("output.bin" if op.binary_answer else None)
        curl += ["-o", output] if output else []
        python += ["print(response.status_code, response.headers['Content-Type'])"]
        if output:
            python += [f"open({output!r}, 'wb').write(response.content)"]
    else:
        python += ["print(response.status_code, response.json())"]
    return [
        {"lang": "Shell", "label": "curl", "source": shlex.join(curl).replace(f"'X-API-Key: ${SAMPLE_KEY_VARIABLE}'",
                                                                             f'"X-API-Key: ${SAMPLE_KEY_VARIABLE}"')},
        {"lang": "Python", "label": "Python", "source": "\n".join(python) + "\n"},
    ]
