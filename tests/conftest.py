"""Shared fixtures: configs composed by Hydra's compose API, each writing into a temporary folder."""

import pytest
from hydra import compose, initialize_config_module

from backprop_lab.train import CONFIG_MODULE, CONFIG_NAME


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the training config with ``overrides``; outputs under tmp_path, no pictures."""

    def _make(*overrides: str, run: str = "run"):
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(
                CONFIG_NAME,
                overrides=[f"paths.output_dir={tmp_path / run}", "plots=false", *overrides],
            )

    return _make


@pytest.fixture
def refusal(capsys):
    """Run a command's pre-flight check on ``args``; assert it exits 2 with one line, and
    return that line."""
    from backprop_lab.hydra_errors import preflight
    from backprop_lab.run import validate

    def _refused(args, config_name=CONFIG_NAME, check=validate, prog="backprop-train"):
        with pytest.raises(SystemExit) as exit_info:
            preflight(args, CONFIG_MODULE, config_name, check, prog=prog)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
        return lines[0]

    return _refused
