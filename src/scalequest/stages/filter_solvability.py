"""Solvability filter (paper §2.3): a judge model keeps the questions it finds solvable.

The judge (paper: Qwen2-Math-7B-Instruct, greedy, up to 2048 tokens) reads each question as a math
teacher would: is it a math problem at all, and can it be answered from its own conditions? It tries to
solve it, explains, and ends with Yes or No. A question stays when the judge's *final* verdict is Yes.

The verdict is read from the end of the judge's output only. The official code keeps a question when
"yes" appears anywhere in the output, so "Yes, it is a math problem, but ... so: No." passes; we do not
copy that. An output that ends without a verdict (cut off at max_new_tokens, trailing chatter) is
undecided: counted, and dropped unless `keep_undecided` is set.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from scalequest.config import DomainChoice, EngineConfig, HFEngineConfig, RowStageConfig, sampling_config
from scalequest.engines import load_engine
from scalequest.stage import RowStage, Shard, ShardResult
from scalequest.templates import uses_chat_template

# Our wording. No braces other than the placeholder: the question goes in with str.format.
JUDGE_PROMPT = """You are a mathematics teacher reviewing a question that a student wrote.

Question:
{question}

Decide two things.
1. Is this a mathematics problem (rather than a request for an essay, code, advice or a chat)?
2. Can it be answered from the information it gives, and only that? Try to solve it: check that every quantity you \
need is stated, that its conditions do not contradict each other, and that it asks for one definite thing.

Explain your reasoning briefly. Then write your verdict alone on the last line: Yes if both hold, No if either fails."""

CODE_JUDGE_PROMPT = """You are a programming teacher reviewing a task that a student wrote.

Task:
{question}

Decide two things.
1. Is this a programming task that asks for a Python function (rather than an essay, a math exercise with no code, \
advice or a chat)?
2. Can it be solved from the information it gives, and only that? Think through a solution: check that the \
function's name, arguments and return value are clear, that the input and output format is stated, and that any \
examples agree with the description.

Explain your reasoning briefly. Then write your verdict alone on the last line: Yes if both hold, No if either fails."""

JUDGE_PROMPTS = {"math": JUDGE_PROMPT, "code": CODE_JUDGE_PROMPT}

Verdict = Literal["yes", "no", "undecided"]

JudgeSampling = sampling_config("JudgeSampling", temperature=0.0, top_p=1.0, max_new_tokens=2048)


class FilterSolvabilityConfig(DomainChoice, RowStageConfig):
    """Keep the questions a judge model finds solvable (its final verdict is Yes)."""

    stage = "filter-solvability"

    field: str = Field("question", description="Row field holding the question text.")
    engine: EngineConfig = Field(
        default_factory=HFEngineConfig, description="The judge model (paper: Qwen2-Math-7B-Instruct)."
    )
    sampling: JudgeSampling = Field(
        default_factory=JudgeSampling, description="Judge decoding (paper: greedy, up to 2048 new tokens)."
    )
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat = the prompt as a user message through the chat template; plain = raw text (base models); "
        "auto = chat when the tokenizer has a template.",
    )
    keep_undecided: bool = Field(
        False, description="Keep questions whose judge output ends without a Yes or No (they are always counted)."
    )
    shard_size: int = Field(256, ge=1, description="Questions per output shard; a shard is the unit of resume.")


# --------------------------------------------------------------------------------------------------
# Reading the verdict
# --------------------------------------------------------------------------------------------------

# Wrappers a judge puts around its last word: markdown emphasis and headings, LaTeX boxes and text
# commands, quotes and brackets. They are removed before looking at the words.
_MARKUP = re.compile(r"\\(?:boxed|fbox|text|textbf|mathrm|mathbf)\s*\{|[*_`#>\"'“”‘’$\[\](){}]")
# A Yes/No that is a verdict, not one side of "Yes/No" or "yes or no" (the judge echoing the question).
_VERDICT = r"(yes|no)\b(?!\s*(?:/|or\b))"
# The same test looking backwards, for a Yes/No that ends the line: "Answer (Yes/No):" is no verdict.
_CHOICE_BEFORE = re.compile(r"\b(?:yes|no)\s*(?:/|or)\s*$", re.IGNORECASE)
_FINAL_WORD = re.compile(r"\b(yes|no)\W*$", re.IGNORECASE)
_LABEL = r"(?:final\s+)?(?:answer|verdict|judgement|judgment|decision|conclusion)\s*(?:is)?\s*[:\-=]?\s*"
# "No, the total is never given." or "Answer: Yes (it is solvable)": the verdict opens the last line,
# right after an optional label, and punctuation separates it from the explanation.
_LEADING_VERDICT = re.compile(rf"^(?:{_LABEL})?{_VERDICT}\s*(?:[,.;:!\-]|$)", re.IGNORECASE)
# "... so the answer is yes, it can be solved." anywhere on the last line.
_LABELLED_VERDICT = re.compile(rf"\b{_LABEL}{_VERDICT}", re.IGNORECASE)


def parse_verdict(output: str) -> Verdict:
    """The judge's final verdict: "yes" or "no" from the last non-empty line, else "undecided".

    The last line counts when it ends with Yes/No ("Answer: **Yes**.", "\\boxed{No}", "Final verdict:
    no"), opens with one ("No, the price is missing."), or labels one ("The answer is yes, it can be
    solved."). Earlier lines never count, so a Yes in the reasoning cannot outvote a final No.
    """
    lines = [line for line in (output or "").splitlines() if _MARKUP.sub(" ", line).strip(" \t.:;,!-=~")]
    if not lines:
        return "undecided"
    last = " ".join(_MARKUP.sub(" ", lines[-1]).split())
    match = _FINAL_WORD.search(last)
    if match and not _CHOICE_BEFORE.search(last[: match.start()]):
        return match.group(1).lower()  # type: ignore[return-value]
    match = _LEADING_VERDICT.match(last) or _last_match(_LABELLED_VERDICT, last)
    if match:
        return match.group(1).lower()  # type: ignore[return-value]
    return "undecided"


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def judge_prompt(question: str, domain: str = "math") -> str:
    return JUDGE_PROMPTS[domain].format(question=question.strip())


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


class FilterSolvability(RowStage):
    config: FilterSolvabilityConfig

    def required_fields(self) -> tuple[str, ...]:
        return (self.config.field,)

    def setup(self) -> None:
        self.engine = load_engine(self.config.engine)
        self.chat = uses_chat_template(self.engine, self.config.engine, self.config.prompt_format)

    def prompt(self, question: str):
        text = judge_prompt(question, self.config.domain)
        return [{"role": "user", "content": text}] if self.chat else text

    def process(self, shard: Shard) -> ShardResult:
        config, sampling = self.config, self.config.sampling
        result = ShardResult(rows=[])
        to_judge = []
        for row in shard.rows:
            question = row[config.field]
            if isinstance(question, str) and question.strip():
                to_judge.append(row)
            else:
                result.remove(row, "empty")
        params = sampling.params(sampling.seed + shard.index, n=1)  # one verdict per question; greedy by default
        outputs = self.engine.generate([self.prompt(row[config.field]) for row in to_judge], params) if to_judge else []
        for index, (row, completions) in enumerate(zip(to_judge, outputs)):
            if not completions:
                result.fail(row, self.engine.failure(index))
                continue
            completion = completions[0]
            result.tokens_in += completion.prompt_tokens
            result.tokens_out += completion.completion_tokens
            result.counts[f"finish_{completion.finish_reason}"] += 1
            verdict = parse_verdict(completion.text)
            result.counts[f"verdict_{verdict}"] += 1
            if verdict == "no":
                result.remove(row, "unsolvable", {"judgement": completion.text})
            elif verdict == "undecided" and not config.keep_undecided:
                result.remove(row, "undecided", {"judgement": completion.text})
            else:
                result.keep({**row, "solvability_verdict": verdict, "solvability_judgement": completion.text}, row)
        return result

    def teardown(self) -> None:
        self.engine.close()

    def finalize(self) -> dict:
        return {"judge": self.config.engine.model, "judge_prompt": JUDGE_PROMPTS[self.config.domain]}
