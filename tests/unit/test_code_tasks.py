"""The bundled code tasks (src/scalequest/data/code_tasks_train.jsonl, written by scripts/make_code_tasks.py):
row schema, unique ids and questions, a fenced python block of examples in every question, tests that parse,
a byte-identical rerun of the generator, and every reference solution passing its own tests."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_code_tasks.py"
DATA = REPO / "src" / "scalequest" / "data" / "code_tasks_train.jsonl"
FIELDS = {"id", "question", "entry_point", "tests", "solution"}
EXAMPLES_BLOCK = re.compile(r"```python\n((?:assert [^\n]+\n)+)```")

# Run in a separate process (see test_every_reference_solution_passes_its_tests): exec each row's reference
# solution, then each of its tests; also check that a stub returning None fails at least one test of every row.
CHECK_SOLUTIONS = """
import json, sys
failures = []
for line in open(sys.argv[1], encoding="utf-8"):
    row = json.loads(line)
    namespace = {}
    try:
        exec(row["solution"], namespace)
        for test in row["tests"]:
            exec(test, namespace)
    except Exception as error:
        failures.append(f"{row['id']}: {type(error).__name__}: {error}")
    stub = {row["entry_point"]: lambda *args, **kwargs: None}
    caught = 0
    for test in row["tests"]:
        try:
            exec(test, dict(stub))
        except Exception:
            caught += 1
    if caught == 0:
        failures.append(f"{row['id']}: a function returning None passes every test")
print(json.dumps(failures))
"""


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


def load_script(monkeypatch):
    """Import scripts/make_code_tasks.py (not a package) as a module; dataclasses need it in sys.modules."""
    spec = importlib.util.spec_from_file_location("make_code_tasks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_bundled_file_has_enough_rows_with_the_schema(rows):
    assert len(rows) >= 250
    for row in rows:
        assert set(row) == FIELDS, row["id"]
        assert all(isinstance(row[key], str) for key in FIELDS - {"tests"})
        assert isinstance(row["tests"], list) and all(isinstance(test, str) for test in row["tests"])


def test_ids_and_questions_are_unique(rows):
    ids = [row["id"] for row in rows]
    assert ids == [f"code-task-{number:04d}" for number in range(len(rows))]
    assert len({row["question"] for row in rows}) == len(rows)


def test_question_names_the_entry_point_with_examples_and_no_solution(rows):
    for row in rows:
        question, name = row["question"], row["entry_point"]
        assert name.isidentifier(), row["id"]
        assert f"`{name}`" in question, row["id"]
        signature = row["solution"].splitlines()[0]
        assert signature.startswith(f"def {name}(") and signature.endswith(":"), row["id"]
        assert f"`{signature}`" in question, row["id"]  # the exact signature is given
        block = EXAMPLES_BLOCK.search(question)
        assert block, row["id"]
        examples = block.group(1).splitlines()
        assert examples == row["tests"][:2], row["id"]  # the two examples are the first tests
        assert all(f"{name}(" in line for line in examples), row["id"]
        assert row["solution"].split("\n", 1)[1] not in question, row["id"]  # the body is not given away


def test_every_test_is_one_assert_line_that_parses(rows):
    for row in rows:
        assert 4 <= len(row["tests"]) <= 6, row["id"]
        assert len(set(row["tests"])) == len(row["tests"]), row["id"]
        for test in row["tests"]:
            assert "\n" not in test, row["id"]
            tree = ast.parse(test)
            assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert), (row["id"], test)
            assert f"{row['entry_point']}(" in test, (row["id"], test)
        ast.parse(row["solution"])  # parsed, not run, in this process


def test_rerunning_the_generator_writes_the_same_bytes(tmp_path, monkeypatch):
    # The generator computes the expected values by running its own reference code (written in the script).
    output = tmp_path / "code_tasks.jsonl"
    load_script(monkeypatch).main(["--output", str(output)])
    assert output.read_bytes() == DATA.read_bytes()


def test_every_reference_solution_passes_its_tests():
    # The rows' solutions are our own reference code, so a plain subprocess (no sandbox) is enough; it keeps
    # them out of the test process. Model-written programs are graded elsewhere, in a sandbox.
    result = subprocess.run(
        [sys.executable, "-c", CHECK_SOLUTIONS, str(DATA)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
