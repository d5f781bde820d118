"""The README's extension example runs as written."""
from __future__ import annotations

import re

import h5py
import pytest

from tests.conftest import ROOT


def block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```\w+\n" + re.escape(marker) + r"\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no code block starting with {marker!r}"
    return match.group(1)


def test_readme_user_metric_example(project: pytest.Pytester) -> None:
    (project.path / "suites" / "my_metrics.py").write_text(block_after("# suites/my_metrics.py"))
    (project.path / "suites" / "mine.toml").write_text(block_after("# suites/mine.toml"))
    result = project.runpytest_subprocess("cases", "--suite", "mine", "--run", "mine")
    result.assert_outcomes(passed=1)
    with h5py.File(project.path / "reports/mine/results.h5") as f:
        share = f["cases/digits-mlp-saliency-top_mass/outputs/share"][()]
    assert share.shape == (16,) and ((share >= 3 / 64 - 1e-6) & (share <= 1.0)).all()  # top 3 of 64 pixels
