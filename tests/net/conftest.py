from collections.abc import Callable

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def report_figure() -> Callable[[str], None]:
    """report_figure(line): printed in the run's summary, so figures such as convergence times show up
    without -s."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("network figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
