"""``vigil-generate`` subcommands of the simulators with learned models (``bears``, ``flowsites``).

Each subcommand has the common output options and one option per simulator setting
(``vigil-generate bears --help``); :mod:`generators.cli` adds it, reads its settings
with :data:`CONFIGS` and its messages with :func:`iter_messages`.

Example:
    >>> import argparse
    >>> from generators import cli
    >>> parser = argparse.ArgumentParser()
    >>> sub = parser.add_subparsers(dest="command")
    >>> _ = add_bears_parser(sub, cli._add_output_options, cli._add_sim_options)
    >>> args = parser.parse_args(["bears", "--bears", "2", "--missing-len", "1,2"])
    >>> args.topic, args.bears, args.missing_len, args.seed
    ('bears', 2, (1, 2), None)

"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

from generators import bears, flowsites
from generators.bears import BearSimConfig
from generators.flowsites import FlowSiteConfig

__all__ = ["CONFIGS", "SeriesConfig", "add_bears_parser", "iter_messages"]

#: Settings of any simulator here.
SeriesConfig = BearSimConfig | FlowSiteConfig
#: The settings class of each subcommand.
CONFIGS: dict[str, type[BearSimConfig] | type[FlowSiteConfig]] = {
    "bears": BearSimConfig,
    "flowsites": FlowSiteConfig,
}

_COMMON_HELP = {
    "seed": "random seed (same seed, same bytes)",
    "count": "events in all (0: endless)",
    "start": "event time of the first tick, ISO 8601 (UTC when no offset)",
    "decimals": "decimal places of the values",
}

OutputAdder = Callable[[argparse.ArgumentParser, str], None]
SettingsAdder = Callable[[argparse.ArgumentParser, Any, dict[str, str], str], None]


def add_bears_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_output: OutputAdder,
    add_settings: SettingsAdder,
) -> argparse.ArgumentParser:
    """Add the ``bears`` subcommand: bear heart rates through hibernation, topic ``bears``.

    Args:
        sub: The subcommands of ``vigil-generate``.
        add_output: Adds the common output options for a default topic.
        add_settings: Adds one option per field of a settings dataclass.

    """
    cmd = sub.add_parser("bears", help="bear heart rates through hibernation, 4 readings a day")
    add_output(cmd, "bears")
    helps = {**_COMMON_HELP, **bears.SETTING_HELP}
    add_settings(cmd, BearSimConfig(), helps, "simulator settings")
    return cmd


def iter_messages(cfg: SeriesConfig) -> Iterator[tuple[bytes, bytes]]:
    """The messages of the simulator ``cfg`` belongs to."""
    if isinstance(cfg, FlowSiteConfig):
        return flowsites.iter_messages(cfg)
    return bears.iter_messages(cfg)
