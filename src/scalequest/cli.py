"""Command line: `scalequest STAGE [-c CONFIG.yaml] [key=value ...]`, plus `run`, `demo`, `estimate`, `cost`,
`report`, `inspect` and `serve`.

Bad input ends with one line naming the problem and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from pydantic import Field

from scalequest.config import ConfigError, EngineConfig, HFEngineConfig, Section, describe_fields, load_config

EXIT_BAD_INPUT = 2
EXIT_UNFINISHED = 3  # rows failed (engine requests, after retries); a rerun retries them

# Library warnings about the libraries' own internals, which a user can do nothing about (shown with --debug);
# every other warning stays visible.
QUIET_WARNINGS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def fields_help(cls: type[Section]) -> str:
    rows = describe_fields(cls)
    width = max(len(key) for key, _, _ in rows)
    lines = ["config fields (set in -c YAML or as key=value; nested with dots):"]
    for key, default, description in rows:
        lines.append(f"  {key:<{width}}  {description} [default: {default}]")
    return "\n".join(lines)


def add_common(parser: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        parser.add_argument("-c", "--config", help="YAML config file")
    parser.add_argument("--force", action="store_true", help="redo work even if the output already finished")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")


def add_price(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--price", type=float, default=None, help="dollars per GPU-hour (default: the paper's, $680.8 / 522.9 h)"
    )


class ServeConfig(Section):
    engine: EngineConfig = Field(default_factory=HFEngineConfig, description="The model to serve.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    served_model_name: str | None = Field(None, description="Model name clients send; default: engine.model.")


def build_parser() -> argparse.ArgumentParser:
    from scalequest.pipeline import STAGES

    parser = argparse.ArgumentParser(
        prog="scalequest", description="Synthesize math reasoning datasets from scratch (ScaleQuest)."
    )
    from scalequest import __version__

    parser.add_argument("--version", action="version", version=f"scalequest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, stage in STAGES.items():
        stage_parser = sub.add_parser(
            name,
            help=stage.config.__doc__,
            description=stage.config.__doc__,
            epilog=fields_help(stage.config),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(stage_parser)
        for flag in stage.flags:  # a shortcut for the config field of that name
            stage_parser.add_argument(
                f"--{flag}", help=f"same as {flag}=VALUE: {stage.config.model_fields[flag].description}"
            )
    run = sub.add_parser(
        "run",
        help="run a whole pipeline YAML",
        description="Run every stage of a pipeline YAML in order; STAGE.key=value overrides one stage's field.",
        epilog=f"stages, in order: {', '.join(STAGES)}",
    )
    add_common(run)
    run.add_argument("--plan", action="store_true", help="print every stage's inputs, models and output; run nothing")
    demo = sub.add_parser(
        "demo",
        help="run the demo pipeline on the embedded model",
        description="Sample questions from scratch with the embedded SmolLM2-135M-Instruct and filter them.",
    )
    demo.add_argument(
        "--code", action="store_true", help="the code demo (configs/demo-code.yaml): programming questions"
    )
    demo.add_argument(
        "--output-dir", help="where the demo writes (default: ./scalequest-demo, with --code ./scalequest-demo-code)"
    )
    add_common(demo, config=False)
    cost = sub.add_parser(
        "cost",
        help="print what a run cost (the paper's Table 4 layout)",
        description="Phase, samples, GPU-hours and cost of every finished stage under RUN_DIR.",
    )
    cost.add_argument("run_dir", help="a pipeline's output_dir (one sub-folder per stage)")
    add_price(cost)
    cost.add_argument("--debug", action="store_true", help="show tracebacks")
    estimate = sub.add_parser(
        "estimate",
        help="project rows, tokens, GPU-hours and $ per stage for N final pairs from a small pilot run",
        description="Run the pipeline as configured (a pilot: set a small generate-questions.num; finished stages "
        "are read, not rerun), then project every stage for --pairs final pairs in the paper's Table 4 layout.",
    )
    add_common(estimate)
    estimate.add_argument("--pairs", type=int, required=True, help="final question-response pairs wanted")
    estimate.add_argument("--gpu", default="A100", help="GPU type of the throughput table (default: A100)")
    add_price(estimate)
    estimate.add_argument("--throughput", help="YAML overriding the shipped per-GPU throughput table")
    estimate.add_argument("--no-pilot", action="store_true", help="read the finished pilot only; run nothing")
    report = sub.add_parser(
        "report",
        help="write one self-contained HTML report of a run (charts, funnel, cost, samples)",
        description="Write RUN_DIR/report/report.html (charts embedded) and its PNGs from a pipeline's output "
        "folder or one stage's folder.",
    )
    report.add_argument("run_dir", help="a pipeline's output_dir, a folder of them, or one stage's output folder")
    report.add_argument("--output", default=None, help="folder for report.html and the PNGs (default: RUN_DIR/report)")
    add_price(report)
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    inspect = sub.add_parser(
        "inspect",
        help="browse the rows of a stage output: kept, removed (with reason and evidence), one by id",
        description="Browse the rows of a stage output in the terminal; --json prints them as JSON lines.",
    )
    inspect.add_argument("output", help="a stage's output folder")
    inspect.add_argument("--removed", metavar="REASON|all", help="show removed rows: those of one reason, or all")
    inspect.add_argument("--id", help="show the row with this id, kept or removed")
    inspect.add_argument("--sample", type=int, metavar="N", help="N rows at random (seeded by --seed)")
    inspect.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")
    inspect.add_argument(
        "--limit", type=int, default=5, metavar="N", help="without --sample: the first N rows; 0: all (default: 5)"
    )
    inspect.add_argument("--json", action="store_true", help="print the rows as JSON lines, for scripts")
    inspect.add_argument("--debug", action="store_true", help="show tracebacks")
    serve = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions).",
        epilog=fields_help(ServeConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("-c", "--config", help="YAML config file")
    serve.add_argument("--debug", action="store_true", help="show tracebacks")
    serve.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")
    return parser


def print_stage_summary(name: str, manifest: dict) -> None:
    dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(manifest.get("dropped", {}).items()))
    parts = [f"{manifest.get('rows_in', 0)} in"]
    if "rows_out" in manifest:
        parts[0] += f" -> {manifest['rows_out']} out" + (f" (dropped: {dropped})" if dropped else "")
    if manifest.get("tokens_out"):
        parts.append(f"{manifest['tokens_out']} tokens generated")
    if manifest.get("steps") is not None:
        first, last, mean = (
            manifest.get("first_logged_loss"),
            manifest.get("last_logged_loss"),
            manifest.get("train_loss"),
        )
        # Short runs log the loss once or never; their mean training loss is then the figure to show.
        if first is not None and last is not None and first != last:
            parts.append(f"{manifest['steps']} steps, loss {first:.3f} -> {last:.3f}")
        else:
            parts.append(f"{manifest['steps']} steps" + (f", train loss {mean:.3f}" if mean is not None else ""))
    parts.append(f"{manifest['wall_seconds']:.1f}s")
    print(f"{name}: {', '.join(parts)} -> {manifest['config']['output']}")


def demo(args) -> None:
    from scalequest.io import load_rows
    from scalequest.pipeline import STAGES, command_of, run_pipeline

    name = "demo-code" if args.code else "demo"
    output_dir = args.output_dir or f"scalequest-{name}"
    with resources.as_file(resources.files("scalequest") / "configs" / f"{name}.yaml") as path:
        results = run_pipeline(path, [f"output_dir={output_dir}", *args.overrides], force=args.force)
    print(f"\nDemo output: {Path(output_dir).resolve()}")
    print("Funnel:")
    for name, manifest in results:
        print("  ", end="")
        print_stage_summary(name, manifest)
    manifests = dict(results)
    for step, manifest in manifests.items():
        if command_of(step) == "evaluate" and "summary" in manifest:
            from scalequest.stages.evaluate import markdown_table

            print(f"\n{step} ({manifest['model']}):\n" + markdown_table(manifest["summary"]))
    questions = [name for name in manifests if STAGES[command_of(name)].writes_questions]
    last_questions = manifests[questions[-1]] if questions else None
    if last_questions is not None:
        print("\nSample questions:")
        for row in load_rows(last_questions["config"]["output"])[:5]:
            print(f"  - {' '.join(row['question'].split())[:300]}")


def serve(args) -> None:
    from scalequest.engines import load_engine
    from scalequest.serve import serve as serve_forever

    config = load_config(ServeConfig, args.config, args.overrides)
    engine = load_engine(config.engine)
    print(f"serving {config.engine.model} on http://{config.host}:{config.port}/v1", flush=True)
    serve_forever(engine, config.served_model_name or config.engine.model, config.host, config.port)


def dispatch(args) -> None:
    from scalequest.pipeline import STAGES, run_one, run_pipeline

    if args.command == "demo":
        demo(args)
    elif args.command == "cost":
        from scalequest.cost import PAPER_PRICE_PER_GPU_HOUR, cost_markdown, cost_rows

        price = PAPER_PRICE_PER_GPU_HOUR if args.price is None else args.price
        print(cost_markdown(cost_rows(args.run_dir, price), price))
    elif args.command == "estimate":
        from scalequest import estimate

        estimate.main(args)
    elif args.command == "inspect":
        from scalequest import inspect

        inspect.main(args)
    elif args.command == "report":
        from scalequest.report import write_report

        print(f"report: {write_report(args.run_dir, args.output, args.price)}")
    elif args.command == "serve":
        serve(args)
    elif args.command == "run":
        if not args.config:
            raise ConfigError("run needs a pipeline YAML: scalequest run -c pipeline.yaml")
        if args.plan:
            from scalequest.pipeline import describe_plan

            print(describe_plan(args.config, args.overrides))
            return
        for name, manifest in run_pipeline(args.config, args.overrides, force=args.force):
            print_stage_summary(name, manifest)
    else:
        stage = STAGES[args.command]
        flags = [f"{flag}={getattr(args, flag)}" for flag in stage.flags if getattr(args, flag) is not None]
        config = load_config(stage.config, args.config, list(args.overrides) + flags)
        manifest = run_one(args.command, config, force=args.force)
        print_stage_summary(args.command, manifest)
        if "summary" in manifest:
            from scalequest.stages.evaluate import markdown_table

            print("\n" + markdown_table(manifest["summary"]))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand before or after flags such as --limit; argparse leaves the later ones over.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    logging.basicConfig(level=logging.INFO, format="scalequest: %(message)s")
    if not args.debug:
        import warnings

        for category, message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        logging.getLogger("transformers").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per HTTP request of the openai engine
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    from scalequest.code.sandbox import SandboxUnavailable
    from scalequest.io import DataError
    from scalequest.math import BenchmarkError
    from scalequest.models import ModelError
    from scalequest.runner import StageIncomplete

    try:
        dispatch(args)
    except (ConfigError, DataError, ModelError, BenchmarkError, SandboxUnavailable) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageIncomplete as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNFINISHED
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
