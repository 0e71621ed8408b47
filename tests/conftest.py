"""Print every parity comparison (max abs difference per tensor) at the end of the run."""

from parity import REPORT


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("parity with the reference: max abs difference per tensor")
        for line in REPORT:
            terminalreporter.write_line(line)
