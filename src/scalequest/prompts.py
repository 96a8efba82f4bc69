"""Prompts for the question optimizer (QPO preference data) and the parser of its marked final question.

The optimizer gets one question and one direction. Solvability: act as a math teacher, check the question
is a real self-contained math question, solve it to verify, and rewrite it so that it asks one thing with a
single numeric answer, respects common sense, restates every condition and gives away no solution.
Difficulty: fix errors first, list ways to make it harder, plan, and rewrite it adding only about 10-20
words. Both end with the rewrite after a marker line, which `parse_final_question` finds tolerantly:
optimizers write the marker as plain text, in bold, as a heading, with or without a colon.

For programming questions (domain code) the directions are the same and the checks differ. Solvability: the
rewrite is a self-contained task with one exact Python function signature, the input and output format, and
examples written as `assert` lines, and no solution. Difficulty: harder constraints or edge cases, a few words
longer, the signature and assert examples kept in the same form.
"""

from __future__ import annotations

import re

DIRECTIONS = ("solvability", "difficulty")

FINAL_MARKER = "Final question:"

_ENDING = (
    f'Finish your reply with a line that says "{FINAL_MARKER}" followed by the rewritten question, '
    "written out in full. Put nothing after the question."
)

SOLVABILITY_PROMPT = """You are a math teacher checking a question that a student wrote for a worksheet.

Question:
{question}

Do the following.
1. Decide whether this is a real math question that stands on its own. Solve it, to find out whether it can be \
answered from what it says.
2. Rewrite it so that:
   - it asks for exactly one thing, and that thing is a single number;
   - it makes sense in everyday life (amounts of money are not negative, people and objects come in whole numbers);
   - every condition needed to solve it is stated in the question itself;
   - it contains no solution, hint or answer.
   Keep the topic and the numbers of the original wherever they already work.
3. {ending}"""

DIFFICULTY_PROMPT = """You are a math teacher turning a question into a harder one for a strong student.

Question:
{question}

Do the following.
1. If the question contains a mistake or leaves out something needed to solve it, fix that first.
2. List a few ways the question could be made harder, for example one more reasoning step, an extra condition, or \
less convenient numbers.
3. Choose one or two of them and plan the change.
4. Rewrite the question with that change, adding only about 10 to 20 words. Do not solve it.
5. {ending}"""


CODE_SOLVABILITY_PROMPT = """You are a programming teacher checking a task that a student wrote for an exercise sheet.

Task:
{question}

Do the following.
1. Decide whether this is a real programming task that stands on its own. Think through a solution, to find out \
whether it can be solved from what it says.
2. Rewrite it so that:
   - it asks for exactly one Python function and gives its exact signature, e.g. `def name(arg: type) -> type:`;
   - it states the input and the output precisely, including what to do with empty or unusual inputs;
   - it gives two or three examples written as Python assert lines in a ```python block, with correct values;
   - it contains no solution, hint or code other than the signature and the examples.
   Keep the topic of the original wherever it already works.
3. {ending}"""

CODE_DIFFICULTY_PROMPT = """You are a programming teacher turning a task into a harder one for a strong student.

Task:
{question}

Do the following.
1. If the task contains a mistake or leaves out something needed to solve it, fix that first.
2. List a few ways the task could be made harder, for example a tighter constraint, an extra edge case to handle, \
or a second requirement on the output.
3. Choose one or two of them and plan the change.
4. Rewrite the task with that change, adding only about 10 to 30 words. Keep one exact function signature and \
examples as Python assert lines in a ```python block, with values that are correct for the harder task. Do not \
solve it.
5. {ending}"""

PROMPTS = {
    ("math", "solvability"): SOLVABILITY_PROMPT,
    ("math", "difficulty"): DIFFICULTY_PROMPT,
    ("code", "solvability"): CODE_SOLVABILITY_PROMPT,
    ("code", "difficulty"): CODE_DIFFICULTY_PROMPT,
}


def optimizer_prompt(question: str, direction: str, domain: str = "math") -> list[dict[str, str]]:
    """The chat conversation asking the optimizer to rewrite `question` toward `direction`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    template = PROMPTS[domain, direction]
    return [{"role": "user", "content": template.format(question=question.strip(), ending=_ENDING)}]


# A marker line: optional markdown decoration (#, >, *, _, list dash), a name for the rewrite, then a colon
# (ASCII or full-width), a dash, or the end of a heading line. "Question:" alone is not a marker: optimizers
# quote the original under that name.
_MARKER = re.compile(
    r"^[ \t>#*_-]*"
    r"(?:final|rewritten|revised|improved|optimi[sz]ed|new|harder|updated)"
    r"(?:[ \t]+(?:rewritten|revised|improved|optimi[sz]ed|new|harder|updated|math|version[ \t]+of[ \t]+the))?"
    r"[ \t]+(?:question|problem)"
    r"[ \t*_]*(?::|：|\s[-–—]\s|\s*$)[ \t*_]*",
    re.IGNORECASE | re.MULTILINE,
)

# Lines after the question that are commentary, not part of it.
_TRAILER = re.compile(
    r"^[ \t>#*_]*(?:note|explanation|answer|solution|changes?|this (?:version|question|rewrite|revised)|"
    r"i (?:have|added|changed|made)|the (?:answer|solution)|(?:step|reasoning)\b)[^\n]*",
    re.IGNORECASE | re.MULTILINE,
)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|```)\s*$", re.MULTILINE)
# A programming task holds fenced examples, so a fence does not end it.
_CODE_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", re.MULTILINE)


def _unwrap(text: str) -> str:
    """Strip markdown emphasis, quote marks and code fences wrapped around the whole question."""
    previous = None
    while text != previous:
        previous = text
        text = text.strip()
        for left, right in (("**", "**"), ("__", "__"), ("*", "*"), ("_", "_"), ('"', '"'), ("“", "”"), ("`", "`")):
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)]
        if text.startswith(">"):
            text = "\n".join(line.lstrip(">").strip() for line in text.splitlines())
    # Markup with no words in it (a stray "**") is an empty question.
    return text if text.strip("*_#>`\"' \n") else ""


def parse_final_question(output: str, domain: str = "math") -> str | None:
    """The question after the last marker line of an optimizer reply; None when there is none.

    Takes the text after the last marker ("Final question:", "**Final Question:**", "### Final question",
    "Rewritten question -", "Final Question：", ...), up to a horizontal rule or a line of commentary
    ("Note: ...", "Answer: ..."), and strips markdown and quotes around it. Returns "" when the marker
    is there but nothing follows it. For domain code, code fences belong to the question.
    """
    if not output:
        return None
    matches = list(_MARKER.finditer(output))
    if not matches:
        return None
    rest = output[matches[-1].end() :]
    for pattern in (_CODE_RULE if domain == "code" else _RULE, _TRAILER):
        found = pattern.search(rest)
        # A trailer at the very start is the question itself (e.g. "Step"-less text); only cut after content.
        if found and rest[: found.start()].strip():
            rest = rest[: found.start()]
    return _unwrap(rest)
