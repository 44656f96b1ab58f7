"""What both command lines share: one-line usage errors and verb sub-parsers."""

from __future__ import annotations

import argparse
from typing import Tuple


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def verb_parser(prog: str, description: str) -> Tuple[argparse.ArgumentParser, object]:
    """The top-level parser and its required ``VERB`` sub-parsers."""
    parser = OneLineParser(prog=prog, description=description)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB",
                                  parser_class=OneLineParser)
    return parser, verbs
