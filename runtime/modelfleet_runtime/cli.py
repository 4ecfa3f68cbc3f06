"""`modelfleet-runtime`: serve a model, write the demo model, run the retraining Job, or export the prediction log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import SettingsError, add_serve_arguments, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="modelfleet-runtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(commands.add_parser("serve", help="serve a model over HTTP"))
    demo = commands.add_parser("demo-model", help="write the built-in demo model")
    demo.add_argument("--out", required=True, type=Path, help="where to write the .onnx file")
    commands.add_parser("train", help="retrain a model on collected feedback (the retraining Job)", add_help=False)
    commands.add_parser(
        "log", help="the prediction log: `log export` writes it as JSON lines or Parquet", add_help=False
    )
    if argv[:1] == ["train"]:
        from .training import cli_main

        return cli_main(argv[1:])
    if argv[:1] == ["log"]:
        from .log_export import cli_main as log_main

        return log_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo-model":
        from .demo import write_demo_model

        print(write_demo_model(args.out))
        return 0
    try:
        settings = load_settings({k: v for k, v in vars(args).items() if k != "command"})
    except SettingsError as exc:
        parser.error(str(exc))
    from .runner import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
