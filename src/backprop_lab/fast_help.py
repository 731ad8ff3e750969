"""Hydra's ``--help`` text for an app, without Hydra's slow listing of the config groups.

Hydra lists the groups by copying its whole config store (every installed plugin's configs)
once per group and option, which takes most of a second here. The app's own groups are
plain directories of YAML files in its config package, so this module lists those directly,
composes the config with Hydra's compose API and fills in the same help template. It answers
only the plain form (``--help`` or ``-h`` with key=value overrides, a template that uses
``$APP_CONFIG_GROUPS`` and ``$CONFIG`` only); anything else is left to Hydra.
"""

import string
from importlib import resources

from omegaconf import OmegaConf, open_dict

HELP_FLAGS = ("--help", "-h")
# The template placeholders this module can fill; Hydra's template may also use others.
FILLED = {"APP_CONFIG_GROUPS", "CONFIG"}


def _app_groups(config_module: str) -> str:
    """``group: option, option`` lines for every directory of YAML files, as Hydra writes them.

    Groups under hydra/ are Hydra's, so they are left out, as Hydra's app help does.
    """
    lines = []

    def walk(folder, prefix: str) -> None:
        options = sorted(p.name[:-len(".yaml")] for p in folder.iterdir()
                         if p.is_file() and p.name.endswith(".yaml"))
        if prefix and options and prefix != "hydra" and not prefix.startswith("hydra/"):
            lines.append((prefix, options))
        for child in folder.iterdir():
            if child.is_dir() and not child.name.startswith(("_", ".")):
                walk(child, f"{prefix}/{child.name}" if prefix else child.name)

    walk(resources.files(config_module), "")
    return "".join(f"{group}: {', '.join(options)}\n" for group, options in sorted(lines))


def fast_help(args: list[str], config_module: str, config_name: str) -> str | None:
    """The text ``--help`` would print for ``args``, or None where Hydra must answer itself."""
    if not any(arg in HELP_FLAGS for arg in args):
        return None
    overrides = [arg for arg in args if arg not in HELP_FLAGS]
    if any(arg.startswith("-") or arg.split("=")[0].lstrip("+~") == "hydra.searchpath"
           for arg in overrides):
        return None  # Hydra's own flags, or another config search path

    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module(config_module, version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception:  # noqa: BLE001 - Hydra reports a bad override in its own words
        return None
    if cfg.hydra.searchpath:
        return None  # groups may come from elsewhere than the config package
    template = string.Template(cfg.hydra.help.template)
    used = {m.group("named") or m.group("braced") for m in template.pattern.finditer(
        template.template)} - {None}
    if not used <= FILLED:
        return None
    with open_dict(cfg):
        del cfg["hydra"]
    return template.substitute(APP_CONFIG_GROUPS=_app_groups(config_module),
                               CONFIG=OmegaConf.to_yaml(cfg))
