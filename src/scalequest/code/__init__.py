"""The code domain: a sandbox for model-written programs (`execute`), programs in responses and tests
(`programs`), and code benchmarks (`benchmarks`)."""

from scalequest.code.sandbox import Execution, SandboxUnavailable, check_available, execute, execute_many

__all__ = ["Execution", "SandboxUnavailable", "check_available", "execute", "execute_many"]
