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
