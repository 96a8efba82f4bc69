"""Optimizer prompts and the tolerant parser of the marked final question."""

from __future__ import annotations

import pytest

from scalequest.prompts import DIRECTIONS, FINAL_MARKER, optimizer_prompt, parse_final_question

QUESTION = "Sam has 4 boxes with 6 pens each. He gives away 5 pens. How many pens does he have left?"

# (optimizer reply, expected final question); None = no marked final question.
CASES = [
    # plain marker on its own line, the question below
    (f"The question is solvable: 4*6-5 = 19.\n\nFinal question:\n{QUESTION}", QUESTION),
    # marker and question on one line
    (f"Checked, it works.\nFinal question: {QUESTION}", QUESTION),
    # markdown bold marker
    (f"1. Solvable.\n2. Rewritten.\n\n**Final Question:** {QUESTION}", QUESTION),
    # bold with the colon outside the bold
    (f"**Final question**: {QUESTION}", QUESTION),
    # markdown heading, question on the next line, wrapped in bold
    (f"### Plan\nAdd a discount.\n\n### Final Question\n**{QUESTION}**", QUESTION),
    # heading with a colon
    (f"## Final question:\n\n{QUESTION}\n", QUESTION),
    # full-width colon
    (f"Final Question：{QUESTION}", QUESTION),
    # dash instead of colon
    (f"Final question - {QUESTION}", QUESTION),
    # upper case, quoted
    (f'FINAL QUESTION: "{QUESTION}"', QUESTION),
    # other names for the rewrite
    (f"Rewritten question: {QUESTION}", QUESTION),
    (f"**Revised Problem:**\n{QUESTION}", QUESTION),
    (f"Improved version of the question... no.\nFinal rewritten question: {QUESTION}", QUESTION),
    # blockquote
    (f"Final question:\n> {QUESTION}", QUESTION),
    # several markers: the last one wins (the first draft is revised later)
    (f"Rewritten question: Sam has 4 boxes.\nOn reflection the count is off.\nFinal question: {QUESTION}", QUESTION),
    # commentary after the question is cut off
    (f"Final question: {QUESTION}\n\nNote: I added the number of pens given away.", QUESTION),
    (f"**Final Question:**\n{QUESTION}\n\n---\nThis version asks for one number.", QUESTION),
    (f"Final question:\n{QUESTION}\n\nAnswer: 19", QUESTION),
    # a multi-line question stays whole
    (
        "Final question:\nA shop sells pens at $2 each.\nSam buys 7 pens and pays with a $20 bill. How much change "
        "does he get?",
        "A shop sells pens at $2 each.\nSam buys 7 pens and pays with a $20 bill. How much change does he get?",
    ),
    # failures: no marker at all, only the original quoted, refusal, empty output
    (f"Question:\n{QUESTION}\n\nThis question is fine as it is.", None),
    ("I'm sorry, but I can't help with that.", None),
    ("", None),
    ("The final answer is 19.", None),
    # marker with nothing after it: found, but empty
    ("Let me think about it.\n\nFinal question:", ""),
    ("**Final Question:**\n\n**", ""),
]


@pytest.mark.parametrize("output, expected", CASES)
def test_parse_final_question(output, expected):
    assert parse_final_question(output) == expected


def test_prompt_names_the_marker_and_holds_the_question():
    for direction in DIRECTIONS:
        messages = optimizer_prompt(f"  {QUESTION}\n", direction)
        assert len(messages) == 1 and messages[0]["role"] == "user"
        text = messages[0]["content"]
        assert QUESTION in text and FINAL_MARKER in text
        assert "{" not in text  # every placeholder filled


def test_prompts_differ_by_direction():
    solvability = optimizer_prompt(QUESTION, "solvability")[0]["content"]
    difficulty = optimizer_prompt(QUESTION, "difficulty")[0]["content"]
    assert "single number" in solvability and "10 to 20 words" in difficulty
    with pytest.raises(ValueError, match="unknown direction"):
        optimizer_prompt(QUESTION, "clarity")
