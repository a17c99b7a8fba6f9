"""The dashboard's command-line options, declared once for ``python app.py`` and ``workbench dashboard``.

No Gradio import here, so ``workbench --help`` and the other subcommands stay fast.
"""

from __future__ import annotations

import argparse

DEFAULT_HOST = "127.0.0.1"  # local only: the dashboard trains models and deletes runs, nobody else should reach it
DEFAULT_PORT = 7860


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--runs", default="runs", help="run store folder")
    parser.add_argument("--data-dir", help="folder with local data sets for text tasks (e.g. sst2/train.tsv, "
                                           "sst2/dev.tsv)")
    return parser
