"""Reading another run's newest checkpoint on the host (ssljax.checkpoint), as the learned
views of view_contrast read an infomin_views run's generator."""

import numpy as np
import pytest

from ssljax import checkpoint
from ssljax.config import ConfigError
from ssljax.methods import view_learning


def test_newest_state_comes_back_as_saved(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)
    for step in (1, 2):
        state = {"params": {"generator": {"w": np.full((2, 3), float(step), np.float32)}}}
        ckpt.save(step, state, {"step": step})
    ckpt.close()
    step, state = checkpoint.restore_latest_state_on_host(str(tmp_path / "checkpoints"))
    assert step == 2
    np.testing.assert_array_equal(state["params"]["generator"]["w"], np.full((2, 3), 2.0))
    generator = view_learning.load_generator(str(tmp_path))
    np.testing.assert_array_equal(generator["w"], np.full((2, 3), 2.0))


def test_no_checkpoint_is_none_and_names_the_fix(tmp_path):
    assert checkpoint.restore_latest_state_on_host(str(tmp_path / "nothing")) is None
    with pytest.raises(ConfigError, match="train one with configs/infomin_views.py"):
        view_learning.load_generator(str(tmp_path))
