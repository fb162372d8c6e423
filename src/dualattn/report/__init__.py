"""dualattn.report: aggregate run directories into ``report.md`` tables and PNG plots."""

from dualattn.report.aggregate import Group, RunRecord, find_runs, group_runs
from dualattn.report.markdown import REDUNDANCY_DEFINITION, generate_report

__all__ = ["Group", "RunRecord", "find_runs", "group_runs", "generate_report", "REDUNDANCY_DEFINITION"]
