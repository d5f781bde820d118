"""Reports generated from results files."""
from harness.report.markdown import render, write_report

__all__ = ["render", "write_report"]
