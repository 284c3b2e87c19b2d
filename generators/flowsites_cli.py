"""``vigil-generate flowsites``: simulated sewer flow-site readings to Kafka or to JSON lines.

:func:`add_flowsites_parser` adds the subcommand to ``vigil-generate``'s
subparsers; :mod:`generators.cli` runs it like the others. Output, pacing, progress and Kafka
delivery are those of the other subcommands (the helpers of
:mod:`generators.cli`); the bytes are those of
:func:`generators.flowsites.iter_messages`, keyed by site id::

    vigil-generate flowsites --bootstrap localhost:9092 --sites 8 --count 0 --rate 200
    vigil-generate flowsites --count 2880 --out sites.jsonl --spike-prob 0.002

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="vigil-generate")
    >>> _ = add_flowsites_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["flowsites", "--sites", "2", "--drift-len", "10,20"])
    >>> from generators.cli import config_from_args
    >>> cfg = config_from_args(args)
    >>> cfg.sites, cfg.drift_len, args.topic
    (2, (10, 20), 'flow-sites')

"""

from __future__ import annotations

import argparse
from typing import Any

from generators.flowsites import SETTING_HELP, FlowSiteConfig

__all__ = ["COMMAND", "TOPIC", "add_flowsites_parser"]

COMMAND = "flowsites"
TOPIC = "flow-sites"


def add_flowsites_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``flowsites`` subcommand (output options and one option per setting).

    Args:
        subparsers: What ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The subcommand's parser.

    """
    # generators.cli imports this module to wire the subcommand in: import it late.
    from generators import cli

    parser: argparse.ArgumentParser = subparsers.add_parser(
        COMMAND, help="sewer flow sites: velocity, flow, level, temperature, rainfall"
    )
    cli._add_output_options(parser, TOPIC)
    cli._add_sim_options(parser, FlowSiteConfig(), SETTING_HELP, "simulator settings")
    return parser
