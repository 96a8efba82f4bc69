"""ScaleQuest: synthesize math reasoning datasets from scratch with small open models."""

from scalequest.templates import end_of_turn, pre_query_prefix

__version__ = "0.1.0"
__all__ = ["__version__", "end_of_turn", "pre_query_prefix"]
