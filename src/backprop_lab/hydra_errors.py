"""Turn a bad command line into one clear line and a non-zero exit before Hydra starts a run.

Hydra reports composition errors over several lines with a hint about stack traces. The entry
points compose the config once up front with Hydra's compose API, and on failure print a single
line that names the key and what it allows.
"""

import itertools
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

# Flags after which Hydra prints something other than a run; those are left to Hydra.
HYDRA_INFO_FLAGS = (
    "--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
    "--shell-completion", "-sc", "--resolve", "--package", "-p",
)
MULTIRUN_FLAGS = ("--multirun", "-m")
# Hydra's own options that take a value in the next argument.
OPTIONS_WITH_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                      "--experimental-rerun")


def _overrides(args: list[str]) -> list[str]:
    """The key=value overrides in ``args``, without Hydra's own flags and their values."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def _sweep_variants(overrides: list[str], limit: int) -> list[list[str]]:
    """Plain override lists that together try each value of each sweep (a,b or range(...)).

    The first list takes the first value of every sweep; each further list changes one sweep
    to another of its values, up to ``limit`` values per sweep. Search spaces that only a
    sweeper can draw from (intervals) are left out.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        try:
            values = list(itertools.islice(override.sweep_string_iterator(), limit))
        except (TypeError, ValueError):
            values = []
        key = override.get_key_element()
        choices.append([f"{key}={value}" for value in values])
    first = [options[0] for options in choices if options]
    variants = [first]
    for i, options in enumerate(choices):
        for option in options[1:]:
            variant = list(first)
            variant[sum(1 for c in choices[:i] if c)] = option
            variants.append(variant)
    return variants


# Lines of OmegaConf's error messages that repeat what the first line says.
NOISE_PREFIXES = ("full_key", "object_type", "reference_type", "Set the environment variable")
# Where a message stops saying anything a user of the command line needs.
CUT_AT = "Config search path"
# Values tried per swept key before a multirun starts; later values are checked by their job.
SWEEP_VALUES_CHECKED = 20


def _fold(message: str) -> str:
    """One line from a multi-line message; a tab-indented listing after "...:" becomes a, b, c."""
    sentences, listing = [], False
    for raw in message.split(CUT_AT)[0].splitlines():
        line = raw.strip()
        if not line or line.startswith(NOISE_PREFIXES):
            continue
        if sentences and sentences[-1].endswith(":"):
            sentences[-1] += " " + line
            listing = raw.startswith("\t")
        elif listing and raw.startswith("\t"):
            sentences[-1] += ", " + line
        else:
            listing = False
            sentences.append(line)
    return "; ".join(sentences)


def one_line(err: BaseException) -> str:
    """The message of a Hydra or OmegaConf error, and of its causes, folded into one line."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    parts = []
    while err is not None:
        parent = getattr(err, "parent_node", None)
        if isinstance(err, (ConfigAttributeError, ConfigKeyError)) and parent is not None:
            # An unknown key: say which keys its section has, and how to add one on purpose.
            section = err.full_key.rpartition(".")[0] or "the config"
            keys = ", ".join(str(k) for k in parent.keys() if not str(k).startswith("_"))
            return (f"{err.full_key} is not a known key; keys of {section}: {keys} "
                    f"(to add a new key, prefix it with +)")
        if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
            # Its own text repeats the cause's with the target's import path around it.
            err = err.__cause__
            continue
        text = _fold(str(err))
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__
    return "; ".join(parts)


def preflight(
    args: list[str],
    config_module: str,
    config_name: str,
    check: Callable[[DictConfig], None] | None,
    prog: str,
) -> None:
    """Exit with status 2 and one line on stderr if the overrides in ``args`` cannot work."""
    if any(arg.split("=")[0] in HYDRA_INFO_FLAGS for arg in args):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = _overrides(args)
    try:
        if any(arg in MULTIRUN_FLAGS for arg in args):
            variants = _sweep_variants(overrides, SWEEP_VALUES_CHECKED)
        else:
            variants = [overrides]
        with initialize_config_module(config_module, version_base="1.3"):
            for variant in variants:
                cfg = compose(config_name, overrides=variant)
                if check is not None:
                    OmegaConf.set_readonly(cfg, True)
                    check(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
