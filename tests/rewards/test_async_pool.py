"""AsyncScorer (ffjax/rewards/async_pool.py): order, groupwise, errors, measured overlap;
and train.async_rewards on the toy model gives the serial run's numbers."""

import threading
import time

import numpy as np
import pytest

from ffjax.rewards.async_pool import AsyncScorer
from ffjax.rewards.base import RewardError, Samples


def _chunk(index: int, size: int = 2) -> Samples:
    """A chunk whose every pixel is its index: the reward can tell chunks apart."""
    images = np.full((size, 2, 2, 3), index, np.uint8)
    ids = np.arange(index * size, (index + 1) * size) // 4
    return Samples([f"p{index}"] * size, images=images, group_ids=ids)


class ChunkIndex:
    """Scores a sample by its chunk index (its pixel value); sleeps `delay(index)` first."""

    kind = "pointwise"
    name = "chunk_index"

    def __init__(self, delay=lambda i: 0.0):
        self.delay = delay
        self.finished: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, samples):
        index = int(samples.images[0, 0, 0, 0])
        time.sleep(self.delay(index))
        with self.lock:
            self.finished.append(index)
        return samples.images[:, 0, 0, 0].astype(np.float32) + 0.5


class GroupSize:
    kind = "groupwise"
    name = "group_size"

    def __init__(self):
        self.calls = []

    def __call__(self, samples):
        self.calls.append(len(samples))
        ids = samples.group_ids
        return np.asarray([np.sum(ids == g) for g in ids], np.float32)


def test_order_is_submission_order_when_workers_finish_out_of_order():
    n = 4
    reward = ChunkIndex(delay=lambda i: 0.05 * (n - i))  # the first chunk finishes last
    with AsyncScorer({"idx": (reward, 1.0)}, workers=n) as scorer:
        for i in range(n):
            scorer.submit(_chunk(i))
        out = scorer.finish()
    assert reward.finished != sorted(reward.finished)  # really out of order
    np.testing.assert_array_equal(out["idx"], np.repeat(np.arange(n), 2) + 0.5)
    assert out["idx"].dtype == np.float64
    assert scorer.busy_s >= 0.05 * (1 + 2 + 3 + 4) * 0.9


def test_groupwise_sees_the_whole_epoch_after_the_chunks():
    group = GroupSize()
    with AsyncScorer({"idx": ChunkIndex(), "group": group}, workers=2) as scorer:
        for i in range(3):
            scorer.submit(_chunk(i))
        assert group.calls == []  # nothing before the epoch is complete
        out = scorer.finish()
    assert group.calls == [6]
    np.testing.assert_array_equal(out["group"], [4, 4, 4, 4, 2, 2])  # ids 0 0 0 0 1 1
    assert list(out) == ["idx", "group"]


class Failing:
    kind = "pointwise"
    name = "failing"

    def __init__(self, exc):
        self.exc = exc

    def __call__(self, samples):
        raise self.exc


class WrongShape:
    kind = "pointwise"
    name = "wrong"

    def __call__(self, samples):
        return np.zeros(len(samples) + 1, np.float32)


def test_errors_surface_in_the_main_thread_naming_the_reward():
    with AsyncScorer({"ok": ChunkIndex(), "srv": Failing(RewardError("server gone"))}) as s:
        s.submit(_chunk(0))
        with pytest.raises(RewardError, match="reward 'srv': server gone"):
            s.finish()
    with AsyncScorer({"bad": WrongShape()}) as s:
        s.submit(_chunk(0))
        with pytest.raises(ValueError, match=r"reward 'bad' returned shape \(3,\) for 2"):
            s.finish()
    with AsyncScorer({"buggy": Failing(KeyError("x"))}) as s:
        s.submit(_chunk(0))
        with pytest.raises(KeyError) as info:
            s.finish()
        assert "while scoring reward 'buggy' on chunk 0" in info.value.__notes__
    with AsyncScorer({"srv": Failing(RewardError("down"))}) as s:
        s.submit(_chunk(0))
        time.sleep(0.2)
        with pytest.raises(RewardError, match="'srv'"):  # the next submit stops early
            s.submit(_chunk(1))


def test_trainer_score_fn_turns_errors_into_training_errors():
    from ffjax import trainer
    from ffjax.stages import score

    with AsyncScorer({"srv": Failing(RewardError("down"))}, 1, score.score_one) as s:
        s.submit(_chunk(0))
        with pytest.raises(trainer.TrainingError, match="reward 'srv': down; stopping"):
            s.finish()
    with AsyncScorer({"bad": WrongShape()}, 1, score.score_one) as s:
        s.submit(_chunk(0))
        with pytest.raises(trainer.TrainingError, match="reward 'bad' returned shape"):
            s.finish()


def test_scoring_overlaps_the_producer():
    """N chunks, a producer taking P s per chunk, a reward taking S s: serial would take
    N (S + P); overlapped about N P + S."""
    n, p, s = 5, 0.2, 0.2
    reward = ChunkIndex(delay=lambda i: s)
    t0 = time.perf_counter()
    with AsyncScorer({"idx": reward}, workers=2) as scorer:
        for i in range(n):
            time.sleep(p)  # the device loop producing chunk i
            scorer.submit(_chunk(i))
        t1 = time.perf_counter()
        out = scorer.finish()
    wall, waited = time.perf_counter() - t0, time.perf_counter() - t1
    print(f"overlap: wall {wall:.2f} s vs serial {n * (s + p):.2f} s, waited {waited:.2f} s")
    assert wall < 0.8 * n * (s + p), wall  # ideal 1.2 of 2.0
    assert waited < 2 * s + 0.1
    np.testing.assert_array_equal(out["idx"], np.repeat(np.arange(n), 2) + 0.5)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        AsyncScorer({}, workers=0)


@pytest.mark.slow
def test_async_rewards_train_like_the_serial_run(tmp_path, monkeypatch):
    """train.async_rewards changes when rewards are computed, never what they are."""
    from ffjax import configs, trainer
    from ffjax.stages import score
    from tests.toy_model import toy_config

    pooled = []
    real = score.generate_and_score
    monkeypatch.setattr(score, "generate_and_score", lambda *a: pooled.append(1) or real(*a))
    runs = {}
    for flag in (False, True):
        c = toy_config(tmp_path)
        c.sampling.batch_size = 4  # 16 samples: 4 chunks
        c.train.async_rewards = flag
        c.train.reward_workers = 3
        c.checkpoint.every_epochs = 1  # a params_digest in every row
        configs.validate(c)
        runs[flag] = trainer.train(c, tmp_path / f"async_{flag}", progress=False)
    for serial, overlapped in zip(runs[False], runs[True], strict=True):
        for key in ("reward_mean", "reward_std", "reward/brightness", "loss", "params_digest"):
            assert serial[key] == overlapped[key], key
        assert overlapped["time/reward_busy_s"] > 0
    assert len(runs[True]) == 2 and runs[True][-1]["params_digest"]
    assert len(pooled) == 2  # the async path ran, once per epoch
    c.train.reward_workers = 0
    with pytest.raises(configs.ConfigError, match="train.reward_workers"):
        configs.validate(c)
