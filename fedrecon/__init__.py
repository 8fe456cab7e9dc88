"""fedrecon: federated class-incremental learning with exact statistic merges."""

__version__ = "0.1.0"
