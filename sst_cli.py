"""The `sst` command's front: reads the command line with the standard library alone.

Importing any module of the `sst` package runs `sst/__init__.py`, which imports JAX (seconds, more
on a loaded machine). This module is outside the package so that `sst --help` and a mistyped
command answer at once; only a valid command imports `sst._cli`, which does the work (see its
docstring for the subcommands and the files they write).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys


def parser() -> argparse.ArgumentParser:
    """The parser of `sst run`, `sst sweep` and `sst merge`."""
    parser = argparse.ArgumentParser(
        prog="sst",
        description="Learning time-scales of two-layer networks (Berthier, Montanari, Zhou): "
        "integrate the order-parameter ODEs of a configured problem.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, text in (
        ("run", "integrate the problem at each eps of CONFIG and write files under --out"),
        ("sweep", "run two or more eps, then fit the exponents d log t_k / d log eps"),
    ):
        p = parsers[name] = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", type=pathlib.Path, help="TOML configuration (see examples/)")
        p.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
        p.add_argument(
            "--eps", type=float, nargs="+", help="override problem.eps with these values"
        )
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bars (default: when stderr is a terminal)",
        )
    parsers["sweep"].add_argument(
        "--shard",
        metavar="I/N",
        help="solve only members j with j %% N == I (0 <= I < N), then run `sst merge DIR` "
        "(default under jax.distributed: process_index/process_count)",
    )
    text = "write sweep.json and scaling.png from the members of a sharded sweep under DIR"
    merge = sub.add_parser("merge", help=text, description=text)
    merge.add_argument("out", type=pathlib.Path, metavar="DIR", help="the sweep's --out folder")
    return parser


def shard_spec(spec: str) -> tuple[int, int]:
    """`"I/N"` as `(I, N)`. Raises `ValueError` for anything but integers `0 <= I < N`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if match is None or int(match[1]) >= int(match[2]):
        raise ValueError(
            f"--shard must be I/N with integers 0 <= I < N (e.g. --shard 0/4 for the first of "
            f"four shards); got {spec!r}."
        )
    return int(match[1]), int(match[2])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sst` console script; returns the exit status.

    `--help` and usage errors (exit status 2) are answered before JAX is imported.
    """
    args = parser().parse_args(argv)
    if args.command == "sweep" and args.shard is not None:
        try:
            shard_spec(args.shard)
        except ValueError as err:
            print(f"sst: error: {err}", file=sys.stderr)
            return 2
    from sst._cli import execute  # imports JAX

    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
