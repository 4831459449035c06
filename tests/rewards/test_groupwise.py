"""group_rank by hand, the prompt-text fallback, and group ids reaching a groupwise reward."""

import numpy as np
import pytest

from ffjax import configs, trainer
from ffjax.rewards.base import Samples
from ffjax.rewards.groupwise import group_ids_of, group_rank
from tests.rewards.fixtures import GroupRecorder
from tests.toy_model import toy_config


def test_group_rank_by_hand():
    # One group of 3: ranks 3, 1, 2 (1 = lowest) over K = 3.
    np.testing.assert_allclose(group_rank([3.0, 1.0, 2.0], [0, 0, 0]), [1, 1 / 3, 2 / 3])
    # Ties share the mean of their ranks: 5, 5 span ranks 2 and 3 -> 2.5 each; K = 4.
    np.testing.assert_allclose(group_rank([5, 5, 1, 7], [4, 4, 4, 4]), [2.5 / 4, 2.5 / 4, 1 / 4, 1])
    # Two interleaved groups, ids neither sorted nor contiguous.
    got = group_rank([0.1, 9.0, 0.3, -1.0, 0.2], [7, 2, 7, 2, 7])
    np.testing.assert_allclose(got, [1 / 3, 1, 1, 1 / 2, 2 / 3])
    # NaN (a failed sample) stays NaN and does not count in K.
    got = group_rank([2.0, np.nan, 1.0, 4.0, 4.0], [0, 0, 0, 1, 1])
    np.testing.assert_allclose(got, [1, np.nan, 1 / 2, 3 / 4, 3 / 4])
    with pytest.raises(ValueError, match="3 scores for 2 group ids"):
        group_rank([1, 2, 3], [0, 0])


def test_group_ids_of_falls_back_to_prompt_text():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    s = Samples(["b", "a", "b", "c"], images=images)
    np.testing.assert_array_equal(group_ids_of(s), [0, 1, 0, 2])
    s = Samples(["b", "a", "b", "c"], images=images, group_ids=np.array([5, 5, 6, 6]))
    np.testing.assert_array_equal(group_ids_of(s), [5, 5, 6, 6])
    with pytest.raises(ValueError, match=r"group_ids must be int\[4\]"):
        Samples(["a"] * 4, images=images, group_ids=np.zeros(3, np.int64))


def test_trainer_gives_a_groupwise_reward_the_epochs_groups(tmp_path):
    c = toy_config(tmp_path)  # 4 prompts x K = 4 samples per epoch
    c.train.num_epochs = 1
    c.rewards = configs.ConfigDict()
    configs.add_reward(c, "rank", name="tests.rewards.fixtures:GroupRecorder")
    GroupRecorder.calls.clear()
    history = trainer.train(configs.validate(c), tmp_path / "run", progress=False)
    (ids,) = GroupRecorder.calls  # one call with the whole epoch
    np.testing.assert_array_equal(ids, np.repeat(np.arange(4), 4))
    # Ranks 1..4 of 4 in every group: the mean reward is (1 + 2 + 3 + 4) / 4 / 4.
    assert history[0]["reward_mean"] == pytest.approx(0.625)
