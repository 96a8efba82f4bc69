"""ScaleQuest: synthesize math reasoning datasets from scratch with small open models."""

__version__ = "0.1.0"
