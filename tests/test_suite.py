"""Suite validation: every bad input fails before any work, naming the file, the key and the choices."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases import expand
from harness.plugin.state import suites_named_in
from harness.suite import SuiteError, find_suite, load_suite

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
[suite]
seed = 3
samples = 4

[datasets.digits]
[datasets.pasted]
dataset = "pasted_digits"
canvas = 12

[models.mlp]
hidden = [8]
[models.mlp.training]
epochs = 1

[methods.saliency]
[methods.ig]
method = "integrated_gradients"
n_steps = 4

[metrics.deletion]
steps = 5
[metrics.insertion_lerf]
metric = "insertion"
order = "lerf"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_good_suite_parses_and_expands(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    assert suite.name == "s" and suite.seed == 3 and suite.settings["samples"] == 4
    assert [e.key for e in suite.methods] == ["saliency", "ig"]
    assert suite.methods[1].name == "integrated_gradients" and suite.methods[1].params["n_steps"] == 4
    assert suite.models[0].training["epochs"] == 1 and suite.models[0].training["lr"] == 1e-3
    cases = expand(suite)
    assert len(cases) == 2 * 1 * 2 * 2
    assert cases[0].id == "digits-mlp-saliency-deletion"
    assert [c.id for c in cases] == [c.id for c in expand(load_suite(write(tmp_path, GOOD)))]
    assert len({c.key() for c in cases}) == len(cases)


def test_keys_change_with_any_parameter(tmp_path: Path) -> None:
    base = expand(load_suite(write(tmp_path, GOOD)))[0]
    changed = expand(load_suite(write(tmp_path, GOOD.replace("epochs = 1", "epochs = 2"))))[0]
    assert base.id == changed.id and base.key() != changed.key()
    reseeded = expand(load_suite(write(tmp_path, GOOD.replace("seed = 3", "seed = 4"))))[0]
    assert reseeded.key() != base.key()


def test_batch_budget_does_not_change_keys(tmp_path: Path) -> None:
    base = expand(load_suite(write(tmp_path, GOOD)))[0]
    other = expand(load_suite(write(tmp_path, GOOD.replace("samples = 4", "samples = 4\nbatch_size = 7"))))[0]
    assert base.key() == other.key()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[methods.saliency]", "[methods.saliency]\nmethod = \"salincy\""),
         r"\[methods.saliency\]: unknown method 'salincy'; known methods: .*integrated_gradients.*saliency"),
        (("n_steps = 4", "n_steps = \"four\""),
         r"\[methods.ig\]: parameter 'n_steps' = 'four' has type str, expected int"),
        (("n_steps = 4", "nsteps = 4"), r"\[methods.ig\]: unknown parameter 'nsteps'; valid parameters: .*n_steps"),
        (("order = \"lerf\"", "order = \"sideways\""),
         r"\[metrics.insertion_lerf\]: parameter 'order' = 'sideways' is not valid; choices: 'morf', 'lerf'"),
        (("samples = 4", "samples = 0"), r"\[suite\] samples = 0 must be at least 1"),
        (("samples = 4", "samples = 4\ntarget = \"truth\""),
         r"\[suite\]: parameter 'target' = 'truth' is not valid; choices: 'label', 'prediction'"),
        (("samples = 4", "samples = 4\nsaples = 4"), r"\[suite\]: unknown parameter 'saples'"),
        (("epochs = 1", "epochs = 1\noptimizer = \"lbfgs\""),
         r"\[models.mlp\] training: parameter 'optimizer' = 'lbfgs' is not valid; choices: 'adam'"),
        (("epochs = 1", "epochs = 1\nschedule = \"cosine_restarts\"\nlr_gamma = 0.5"),
         r"\[models.mlp\] training: lr_gamma = 0.5 with schedule = 'cosine_restarts': these are two"),
        (("epochs = 1", "epochs = 1\nrestart_epochs = 0"),
         r"\[models.mlp\] training: restart_epochs = 0 must be an integer >= 1"),
        (("[datasets.digits]\n", "[datasets.digits]\nsize = 8.5\n"),
         r"\[datasets.digits\]: parameter 'size' = 8.5 has type float, expected int"),
        (("[suite]", "[suite]\nplugins = [\"no_such_module_xyz\"]"),
         r"plugins: cannot import 'no_such_module_xyz'"),
        (("[suite]", "[suitee]\n[suite]"), r"unknown top-level key 'suitee'; valid keys: suite, datasets"),
        (("[datasets.pasted]", "[datasets.pas-ted]"), r"instance names must be identifiers"),
    ],
    ids=["unknown-method", "wrong-type", "unknown-param", "bad-choice", "samples-zero", "bad-target",
         "unknown-setting", "bad-optimizer", "two-schedules", "restart-zero", "float-for-int", "missing-plugin", "unknown-section", "bad-name"],
)
def test_bad_suites_name_file_key_and_choices(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_missing_section_is_named(tmp_path: Path) -> None:
    text = GOOD.replace("[metrics.deletion]\nsteps = 5\n", "").replace(
        "[metrics.insertion_lerf]\nmetric = \"insertion\"\norder = \"lerf\"\n", "")
    with pytest.raises(SuiteError, match=r"missing \[metrics\]"):
        load_suite(write(tmp_path, text))


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(write(tmp_path, "[suite\n"))


def test_find_suite_by_name_and_path(tmp_path: Path) -> None:
    assert find_suite("smoke", ROOT / "suites") == ROOT / "suites" / "smoke.toml"
    path = write(tmp_path, GOOD)
    assert find_suite(str(path), ROOT / "suites") == path
    with pytest.raises(SuiteError, match=r"unknown suite 'smok'; suites in .*: .*default.*smoke"):
        find_suite("smok", ROOT / "suites")


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "suites").glob("*.toml")))
def test_shipped_suites_are_valid(name: str) -> None:
    suite = load_suite(ROOT / "suites" / f"{name}.toml")
    cases = expand(suite)
    assert cases, f"suite {name} expands to no case"
    assert len({c.id for c in cases}) == len(cases)


@pytest.mark.parametrize(("expr", "expected"), [
    ("smoke", ["smoke"]), ("faithfulness and smoke", ["smoke"]), ("(localization or roar) and default", ["default"]),
    ("not smoke", []), ("faithfulness and not smoke", []), ("smokey", []), ("", []),
    ("smoke or default", ["default", "smoke"]),
])
def test_suite_named_in_marker_expression(expr: str, expected: list[str]) -> None:
    assert suites_named_in(expr, ["default", "smoke"]) == expected


def test_only_patterns_restrict_an_entry_to_matching_cases(tmp_path: Path) -> None:
    path = tmp_path / "only.toml"
    path.write_text(GOOD.replace('order = "lerf"', 'order = "lerf"\nonly = ["digits-*"]')
                    .replace('n_steps = 4', 'n_steps = 4\nonly = ["*-deletion"]'))
    suite = load_suite(path)
    ids = {case.id for case in expand(suite)}
    assert "digits-mlp-saliency-insertion_lerf" in ids and "digits-mlp-ig-deletion" in ids
    assert "pasted-mlp-saliency-insertion_lerf" not in ids and "digits-mlp-ig-insertion_lerf" not in ids
    assert "pasted-mlp-saliency-deletion" in ids
    plain = tmp_path / "plain.toml"
    plain.write_text(GOOD)
    keys = {c.id: c.key() for c in expand(load_suite(plain))}
    assert all(keys[c.id] == c.key() for c in expand(suite))  # `only` selects cases, it is not in their key
    path.write_text(GOOD.replace('order = "lerf"', 'order = "lerf"\nonly = "digits-*"'))
    with pytest.raises(SuiteError, match=r"\[metrics.insertion_lerf\]: only must be a list"):
        load_suite(path)


def test_no_shipped_suite_is_named_like_a_family_or_marker() -> None:
    """`-m NAME` loads the suite NAME: a suite named like a metric family would make `-m roar` (or
    `-m "coverage and smoke"`) load that suite instead of selecting the family."""
    from harness.plugin import STATIC_MARKERS
    from harness.specs import FAMILIES

    names = {p.stem for p in (ROOT / "suites").glob("*.toml")}
    assert not names & (set(FAMILIES) | set(STATIC_MARKERS) - {"reproduce"})
