"""decision_core: learn goal-reaching decision policies from logs of sequential systems."""

__version__ = "0.1.0"
