"""The plugin end to end with pytester: cases, HDF5 content, report, xdist, resume, failures, interrupts."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from harness import load_results
from harness.store import read_run

TINY = """
[suite]
seed = 1
samples = 6
batch_size = 64
plugins = {plugins}

[datasets.digits]

[models.mlp]
hidden = [16]
[models.mlp.training]
epochs = 2

[methods.random]
[methods.saliency]

[metrics.deletion_morf]
metric = "deletion"
steps = 5
[metrics.insertion_morf]
metric = "insertion"
steps = 5
{extra}
"""

BROKEN_METRIC = '''
from pathlib import Path

import torch
from harness.specs import METRICS, MetricResult, MetricSpec


def compute(inputs, ctx, fail_on="random"):
    n = inputs.x.shape[0]
    value = torch.full((n,), float("nan")) if fail_on == "nan" else torch.zeros(n)
    if fail_on == "interrupt" and Path("interrupt.flag").exists():
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during this case
    return MetricResult(outputs={"score": value}, primary="score", higher_is_better=True,
                        bounds={"score": (0.0, 1.0)}, forward_passes=0)


METRICS.add("user_metric", MetricSpec(name="user_metric", family="faithfulness", compute=compute,
            modalities=frozenset({"image"}), defaults={"fail_on": "none"}))
'''


@pytest.fixture(autouse=True)
def tiny_suite(project: pytest.Pytester) -> None:
    write_suite(project, plugins="[]", extra="")


def write_suite(pytester: pytest.Pytester, plugins: str, extra: str) -> None:
    (pytester.path / "suites" / "tiny.toml").write_text(TINY.format(plugins=plugins, extra=extra))


def outputs(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    _, records = read_run(run_dir)
    return {r.attrs["id"]: r.outputs for r in records}


def test_runs_cases_and_writes_hdf5_and_report(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("cases", "--run", "one")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*xaiharness results*", "*digits-mlp-saliency-deletion_morf*auc*"])
    run = project.path / "reports" / "one"
    with h5py.File(run / "results.h5") as f:
        assert f.attrs["format_version"] == 2 and f.attrs["suite"] == "tiny"
        assert "torch" in f.attrs and "suite_toml" in f.attrs
        assert sorted(f["cases"]) == [
            "digits-mlp-random-deletion_morf", "digits-mlp-random-insertion_morf",
            "digits-mlp-saliency-deletion_morf", "digits-mlp-saliency-insertion_morf",
        ]
        case = f["cases/digits-mlp-saliency-deletion_morf"]
        assert case.attrs["status"] == "passed" and case.attrs["family"] == "faithfulness"
        assert case.attrs["method"] == "saliency" and case.attrs["forward_passes"] == 6 * 5
        assert 0.0 <= case.attrs["model_test_score"] <= 1.0
        assert case["outputs/curve_softmax"].shape == (6, 5) and case["outputs/auc"].shape == (6,)
        assert case["sample_index"][()].tolist() == list(range(6))
        assert json.loads(case.attrs["input_shape"]) == [1, 8, 8]
        aggregates = json.loads(case.attrs["aggregates"])
        assert aggregates["auc"] == pytest.approx(float(case["outputs/auc"][()].mean()))
    with h5py.File(run / "results.h5") as f:
        examples = f["examples/digits-mlp-saliency"]
        assert examples["input"].shape == examples["attribution"].shape == (3, 8, 8) and "mask" not in examples
    report = (run / "report.md").read_text()
    assert "## digits × mlp" in report and "| method" in report and "deletion_morf ↓" in report
    assert "### faithfulness" in report and "](figures/digits-mlp.png)" in report
    assert (run / "figures" / "digits-mlp.png").stat().st_size > 1000
    frame = load_results(run)
    assert set(frame["method"]) == {"random", "saliency"} and len(frame[frame.primary]) == 4 * 6


def test_xdist_gives_identical_values(project: pytest.Pytester) -> None:
    project.runpytest_subprocess("cases", "--run", "serial").assert_outcomes(passed=4)
    project.runpytest_subprocess("cases", "--run", "parallel", "-n", "2").assert_outcomes(passed=4)
    serial, parallel = outputs(project.path / "reports/serial"), outputs(project.path / "reports/parallel")
    assert serial.keys() == parallel.keys() and len(serial) == 4
    for case, values in serial.items():
        for name, array in values.items():
            np.testing.assert_array_equal(array, parallel[case][name], err_msg=f"{case} {name}")


def test_resume_skips_recorded_cases_and_runs_missing_ones(project: pytest.Pytester) -> None:
    project.runpytest_subprocess("cases", "--run", "r").assert_outcomes(passed=4)
    path = project.path / "reports/r/results.h5"
    with h5py.File(path, "a") as f:
        del f["cases/digits-mlp-random-insertion_morf"]
    result = project.runpytest_subprocess("cases", "--resume", "r")
    result.assert_outcomes(passed=1, skipped=3)
    assert len(outputs(project.path / "reports/r")) == 4
    assert "| random " in (project.path / "reports/r/report.md").read_text()


def test_resume_reruns_a_case_whose_spec_changed(project: pytest.Pytester) -> None:
    project.runpytest_subprocess("cases", "--run", "c").assert_outcomes(passed=4)
    text = (project.path / "suites/tiny.toml").read_text().replace("steps = 5\n[metrics.insertion", "steps = 6\n[metrics.insertion")
    (project.path / "suites/tiny.toml").write_text(text)
    project.runpytest_subprocess("cases", "--resume", "c").assert_outcomes(passed=2, skipped=2)


def test_bad_suite_fails_before_any_work(project: pytest.Pytester) -> None:
    text = (project.path / "suites/tiny.toml").read_text().replace("[methods.saliency]", "[methods.salency]")
    (project.path / "suites/tiny.toml").write_text(text)
    result = project.runpytest_subprocess("cases")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad suite*tiny.toml*[[]methods.salency[]]*unknown method 'salency'*known methods*saliency*"])
    assert not (project.path / "reports").exists()


def test_bad_option_values_are_rejected(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("cases", "--device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid device 'tpu'; choose auto, cpu, cuda or cuda:N*"])
    result = project.runpytest_subprocess("cases", "--suite", "nosuch")
    result.stderr.fnmatch_lines(["*unknown suite 'nosuch'; suites in *: tiny*"])


def test_user_metric_from_suite_plugin_and_failed_case_recorded(project: pytest.Pytester) -> None:
    (project.path / "my_metrics.py").write_text(BROKEN_METRIC)
    write_suite(project, plugins='["my_metrics"]', extra='[metrics.user]\nmetric = "user_metric"\nfail_on = "nan"\n')
    result = project.runpytest_subprocess("cases", "--run", "u")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*metric outputs invalid: score: 6 of 6 values are not finite*"])
    with h5py.File(project.path / "reports/u/results.h5") as f:
        case = f["cases/digits-mlp-saliency-user"]
        assert case.attrs["status"] == "failed" and "not finite" in case.attrs["message"]
    assert "## Failed cases" in (project.path / "reports/u/report.md").read_text()


def test_interrupt_keeps_finished_cases(project: pytest.Pytester) -> None:
    (project.path / "my_metrics.py").write_text(BROKEN_METRIC)
    write_suite(project, plugins='["my_metrics"]',
                extra='[metrics.user]\nmetric = "user_metric"\nfail_on = "interrupt"\n')
    (project.path / "interrupt.flag").write_text("")
    result = project.runpytest_subprocess("cases", "--run", "i")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    recorded = outputs(project.path / "reports/i")
    assert recorded.keys() == {"digits-mlp-random-deletion_morf", "digits-mlp-random-insertion_morf"}
    (project.path / "interrupt.flag").unlink()
    project.runpytest_subprocess("cases", "--resume", "i").assert_outcomes(skipped=2, passed=4)
    assert len(outputs(project.path / "reports/i")) == 6


CONFTEST_METHOD = '''

import torch
from harness.specs import METHODS, MethodSpec


def build_gradient_sign(model, ctx, scale=1.0):
    def explain(x, target):
        x = x.detach().clone().requires_grad_(True)
        out = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(out, x)
        return scale * grad.sign()
    return explain


METHODS.add("gradient_sign", MethodSpec(name="gradient_sign", build=build_gradient_sign, defaults={"scale": 1.0}))
'''


def test_method_registered_in_conftest(project: pytest.Pytester) -> None:
    with (project.path / "conftest.py").open("a") as f:
        f.write(CONFTEST_METHOD)
    write_suite(project, plugins="[]", extra='[methods.gradient_sign]\nscale = 2.0\n')
    result = project.runpytest_subprocess("cases", "--run", "m", "-k", "gradient_sign")
    result.assert_outcomes(passed=2)
    assert "gradient_sign" in (project.path / "reports/m/report.md").read_text()
