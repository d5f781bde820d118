"""Wires the xaiharness plugin and the fixture modules; nothing else lives here."""
pytest_plugins = [
    "harness.plugin",
    "fixtures.device",
    "fixtures.workspace",
    "fixtures.evaluation",
    "pytester",  # the harness's own plugin tests (tests/test_plugin.py)
]
