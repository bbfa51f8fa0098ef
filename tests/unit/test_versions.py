"""One version, one place: [project].version in pyproject.toml. The chart's appVersion, the image
tag the chart uses when image.tag is empty, the worker image of the examples and docs, the image
names the release workflow pushes and `apwa.__version__` all agree with it (the chart's own
`version` may move on its own). The release workflow also refuses a tag that is not v<version>.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import apwa
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CHART = yaml.safe_load((ROOT / "charts/apwa/Chart.yaml").read_text())
VALUES = yaml.safe_load((ROOT / "charts/apwa/values.yaml").read_text())
WORKFLOW = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
HELPERS = (ROOT / "charts/apwa/templates/_helpers.tpl").read_text()
# Every place that names a released image by a literal tag: ghcr.io/<owner>/apwa-<name>:<tag>
# (placeholders such as :<appVersion> are not tags).
RELEASED_IMAGE = re.compile(r"ghcr\.io/[a-z0-9-]+/apwa-(?:operator|worker):([0-9A-Za-z][^\s'\"|}`]*)")
NAMING_FILES = sorted(
    [*(ROOT / "examples").glob("*.yaml"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")],
)


def test_version_is_a_plain_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


@pytest.mark.parametrize(
    ("where", "value"),
    [
        pytest.param("charts/apwa/Chart.yaml appVersion", CHART["appVersion"], id="chart-appVersion"),
        pytest.param("apwa.__version__", apwa.__version__, id="package-__version__"),
    ],
)
def test_agrees_with_the_package_version(where: str, value: str) -> None:
    assert value == VERSION, f"{where} is {value!r}, pyproject.toml says {VERSION!r}"


def test_chart_image_tag_defaults_to_app_version() -> None:
    # An empty image.tag means the chart's appVersion: the tag the release pushes.
    assert VALUES["image"]["tag"] == ""
    assert "(default .Chart.AppVersion .Values.image.tag)" in HELPERS


def test_chart_image_is_what_the_release_pushes() -> None:
    prefix = WORKFLOW["env"]["IMAGE_PREFIX"]
    assert VALUES["image"]["repository"] == f"{prefix}/apwa-operator"
    tags = WORKFLOW["jobs"]["images"]["steps"][-1]["with"]["tags"]
    assert tags == "${{ env.IMAGE_PREFIX }}/apwa-${{ matrix.image }}:${{ needs.version.outputs.version }}"
    assert WORKFLOW["jobs"]["images"]["strategy"]["matrix"]["image"] == ["operator", "worker"]


@pytest.mark.parametrize("path", NAMING_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_released_image_tags_name_the_package_version(path: Path) -> None:
    tags = set(RELEASED_IMAGE.findall(path.read_text()))
    assert tags <= {VERSION}, f"{path.relative_to(ROOT)} names release images tagged {tags - {VERSION}}"


def test_release_workflow_checks_the_tag_against_the_package_version() -> None:
    assert WORKFLOW[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    script = next(s["run"] for s in WORKFLOW["jobs"]["version"]["steps"] if s.get("id") == "v")
    assert '"$TAG" != "v$version"' in script and "exit 1" in script
