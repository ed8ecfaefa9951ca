"""buf on the gRPC contract, as `make lint` runs it: protos/ passes buf's lint rules and breaks nothing of the
contract as last released (protos/released.json); and the check bites: a renamed field, a changed type or a
removed field fails it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.node_packages import BUF, install_node_packages

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("removai") / "v1" / "inference.proto"


def buf(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Runs buf in `cwd` (its buf.yaml), its output captured; the exit status is the caller's to judge."""
    return subprocess.run([str(BUF), *arguments], check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed() -> None:
    install_node_packages()


def test_the_contract_passes_lint_and_breaks_nothing_released(installed: None) -> None:
    """`buf lint` and `buf breaking --against protos/released.json` (what make lint runs) both pass."""
    linted = buf("lint")
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")
    checked = buf("breaking", "--against", "protos/released.json")
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("string bg_color = 3;", "string background_color = 3;"),
         'Field "3" with name "background_color" on message "RemovalOptions" changed option "json_name"'),
        (("uint32 width = 1;\n  uint32 height = 2;\n  OutputFormat", "uint64 width = 1;\n  uint32 height = 2;\n  OutputFormat"),
         'Field "1" with name "width" on message "ResultMetadata" changed type from "uint32" to "uint64".'),
        (("  string model_version = 6;\n", ""),
         'Previously present field "6" with name "model_version" on message "ResultMetadata" was deleted.'),
    ],
)
def test_a_breaking_change_fails_the_check(installed: None, tmp_path: Path, change: tuple[str, str],
                                           expected: str) -> None:
    """A copy of protos/ with one incompatible change fails `buf breaking` against the released image, naming it."""
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    (tmp_path / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    proto = tmp_path / "protos" / PROTO
    before, after = change
    text = proto.read_text()
    assert text.count(before) == 1
    proto.write_text(text.replace(before, after))

    checked = buf("breaking", "--against", str(ROOT / "protos" / "released.json"), cwd=tmp_path)

    assert checked.returncode == 100, checked
    assert expected in checked.stdout, checked.stdout
