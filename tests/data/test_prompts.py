"""Prompt loading (txt, jsonl, dataset folders, TFDS array_record) and the group sampler."""

import json
import re

import numpy as np
import pytest

from ffjax.data.prompts import GroupSampler, PromptSet, load_prompts

GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a bench"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "two cats"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formats


def test_txt_strips_and_skips_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\ufeff  a cat \n\n   \na dog\r\nthree birds", encoding="utf-8")
    ps = load_prompts(f)
    assert isinstance(ps, PromptSet)
    assert ps.prompts == ["a cat", "a dog", "three birds"]
    assert ps.metadata == [{}, {}, {}]
    assert len(ps) == 3 and ps.source == str(f)


def test_jsonl_other_fields_become_metadata(tmp_path):
    f = _write_jsonl(tmp_path / "p.jsonl", GENEVAL)
    f.write_text(f.read_text() + "\n  \n")  # trailing blank lines are skipped
    ps = load_prompts(str(f))
    assert ps.prompts == ["a bench", "two cats"]
    assert ps.metadata == [{k: v for k, v in r.items() if k != "prompt"} for r in GENEVAL]
    assert ps.take(np.array([1, 1, 0])) == (
        ["two cats", "two cats", "a bench"],
        [ps.metadata[1], ps.metadata[1], ps.metadata[0]],
    )


@pytest.mark.parametrize("name", ["train.txt", "train.jsonl", "train_metadata.jsonl"])
def test_folder_layouts(tmp_path, name):
    # Flow-Factory (<split>.txt / <split>.jsonl) and flow_grpo (<split>_metadata.jsonl).
    if name.endswith(".txt"):
        (tmp_path / name).write_text("a bench\ntwo cats\n")
    else:
        _write_jsonl(tmp_path / name, GENEVAL)
    (tmp_path / "test.txt").write_text("held out\n")
    assert load_prompts(tmp_path).prompts == ["a bench", "two cats"]
    assert load_prompts(tmp_path, split="test").prompts == ["held out"]


def test_folder_with_two_files_for_a_split_asks_to_pick(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    _write_jsonl(tmp_path / "train.jsonl", GENEVAL)
    with pytest.raises(ValueError, match=r"several files.*train\.jsonl.*train\.txt.*pass the one"):
        load_prompts(tmp_path)


# --------------------------------------------------------------------------- errors


def test_missing_file_names_it_and_what_was_looked_for(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as e:
        load_prompts(missing)
    assert ".jsonl" in str(e.value) and "<split>.txt" in str(e.value)


def test_missing_split_in_folder_lists_candidates_and_present_files(tmp_path):
    (tmp_path / "test.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match="no 'train' split") as e:
        load_prompts(tmp_path)
    msg = str(e.value)
    for name in ["train.jsonl", "train_metadata.jsonl", "train.txt", "['test.txt']"]:
        assert name in msg


@pytest.mark.parametrize("name,text", [("e.txt", "\n  \n"), ("e.jsonl", "\n")])
def test_empty_dataset(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=r"e\.(txt|jsonl): no prompts"):
        load_prompts(tmp_path / name)


@pytest.mark.parametrize(
    "line,match",
    [
        ('{"prompt": "ok"', "not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"text": "x", "tag": 1}', r"no 'prompt' field \(fields: \['tag', 'text'\]\)"),
        ('{"prompt": 3}', "'prompt' must be a string, got int"),
        ('{"prompt": null}', "'prompt' must be a string, got NoneType"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, match):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: ") + match):
        load_prompts(f)


def test_unknown_suffix_and_bad_encoding(tmp_path):
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(ValueError, match="unknown prompt file type"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_prompts(tmp_path / "p.txt")


# --------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A tiny prompt dataset prepared offline in array_record format.

    Configs: `small` and `big` (prompt, tag, count); `caption` (no prompt feature) and
    `int_prompt` (an integer prompt) for the error messages.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import registered

    data = {"small": ["a cat", "a dog", "三 birds"], "big": [f"p{i}" for i in range(5)]}
    odd = {"caption": ("caption", tfds.features.Text(), "x"), "int_prompt": ("prompt", np.int64, 1)}

    # Not registered: the loader must find the dataset from its files alone, as in a
    # training process that never imported the builder.
    with registered.skip_registration():

        class FfjaxTinyPrompts(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in [*data, *odd]]
            # No source folder to look up download checksums in (tfds would otherwise
            # resolve this module's package and need the undeclared importlib_resources).
            code_path = None

            def _info(self):
                if self.builder_config.name in odd:
                    key, feature, _ = odd[self.builder_config.name]
                    features = {key: feature}
                else:
                    features = {
                        "prompt": tfds.features.Text(),
                        "tag": tfds.features.Text(),
                        "count": tfds.features.Scalar(dtype=np.int64),
                    }
                return tfds.core.DatasetInfo(
                    builder=self, features=tfds.features.FeaturesDict(features)
                )

            def _split_generators(self, dl_manager):
                if self.builder_config.name in odd:
                    key, _, value = odd[self.builder_config.name]
                    return {"train": iter([(0, {key: value})])}
                ps = data[self.builder_config.name]
                return {
                    "train": self._generate_examples(ps),
                    "test": self._generate_examples(ps[:1]),
                }

            def _generate_examples(self, prompts):
                for i, p in enumerate(prompts):
                    yield i, {"prompt": p, "tag": f"t{i}", "count": i}

    d = tmp_path_factory.mktemp("tfds")
    for config in [*data, *odd]:
        builder = FfjaxTinyPrompts(config=config, data_dir=str(d), file_format="array_record")
        builder.download_and_prepare()
    return d


def test_tfds_array_record(tfds_dir):
    # TFDS stores examples in an order shuffled by key: compare order-free, pairing
    # each prompt with its metadata.
    ps = load_prompts(f"tfds:ffjax_tiny_prompts/small:train@{tfds_dir}")
    rows = sorted(zip(ps.prompts, ps.metadata, strict=True), key=lambda r: r[1]["count"])
    assert rows == [
        (p, {"tag": f"t{i}", "count": i}) for i, p in enumerate(["a cat", "a dog", "三 birds"])
    ]
    assert type(ps.metadata[0]["count"]) is int
    full = load_prompts(f"tfds:ffjax_tiny_prompts/big:train@{tfds_dir}").prompts
    assert sorted(full) == [f"p{i}" for i in range(5)]
    # Version and a split slice (its ':' is not a separator), read in storage order.
    sliced = load_prompts(f"tfds:ffjax_tiny_prompts/big:1.0.0:train[1:3]@{tfds_dir}")
    assert sliced.prompts == full[1:3]
    # No split in the spec: the `split` argument; no config: the first (default) one.
    assert load_prompts(f"tfds:ffjax_tiny_prompts@{tfds_dir}", split="test").prompts == ["a cat"]


def test_tfds_errors(tfds_dir):
    with pytest.raises(FileNotFoundError, match=r"'ffjax_no_such' not found: looked for .*tfds"):
        load_prompts(f"tfds:ffjax_no_such:train@{tfds_dir}")
    with pytest.raises(ValueError, match="cannot read TFDS split 'validation'"):
        load_prompts(f"tfds:ffjax_tiny_prompts/small:validation@{tfds_dir}")
    with pytest.raises(ValueError, match="no dataset name"):
        load_prompts("tfds:")
    with pytest.raises(ValueError, match=r"no 'prompt' feature \(features: \['caption'\]\)"):
        load_prompts(f"tfds:ffjax_tiny_prompts/caption:train@{tfds_dir}")
    with pytest.raises(ValueError, match="'prompt' must be a Text feature, got Tensor"):
        load_prompts(f"tfds:ffjax_tiny_prompts/int_prompt:train@{tfds_dir}")


# --------------------------------------------------------------------------- sampler


def test_sampler_argument_errors():
    for kw, name in [
        (dict(num_prompts=0), "num_prompts"),
        (dict(prompts_per_epoch=0), "prompts_per_epoch"),
        (dict(group_size=0), "group_size"),
    ]:
        args = dict(num_prompts=4, prompts_per_epoch=2, group_size=2, seed=0) | kw
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
            GroupSampler(**args)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        GroupSampler(4, 2, 2, seed=-1)
    with pytest.raises(ValueError, match="epoch_index must be an integer >= 0"):
        GroupSampler(4, 2, 2, seed=0).epoch(-1)


def test_deterministic_and_seed_dependent():
    a = [GroupSampler(10, 4, 3, seed=7).epoch(e) for e in range(6)]
    b = [GroupSampler(10, 4, 3, seed=7).epoch(e) for e in range(6)]
    c = [GroupSampler(10, 4, 3, seed=8).epoch(e) for e in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert a[0].dtype == np.int64 and a[0].shape == (4,)


@pytest.mark.parametrize("n,p", [(10, 4), (12, 4), (3, 8), (1, 2), (7, 7)])
def test_resume_equals_sequential_run(n, p):
    sequential = GroupSampler(n, p, 2, seed=3)
    run = [sequential.epoch(e) for e in range(9)]
    for e in [8, 0, 5, 3]:  # fresh samplers, any order: nothing but the index is needed
        np.testing.assert_array_equal(GroupSampler(n, p, 2, seed=3).epoch(e), run[e])


@pytest.mark.parametrize("n,p", [(10, 4), (12, 4), (3, 8), (7, 7)])
def test_every_prompt_once_per_pass(n, p):
    sampler = GroupSampler(n, p, 2, seed=11)
    stream = np.concatenate([sampler.epoch(e) for e in range(3 * n)])  # 3p whole passes
    passes = stream.reshape(-1, n)
    for q, row in enumerate(passes):
        assert sorted(row) == list(range(n))
        np.testing.assert_array_equal(row, np.random.default_rng([11, q]).permutation(n))
    assert not all(np.array_equal(passes[0], r) for r in passes[1:])  # reshuffled per pass


def test_shuffle_false_is_the_plain_cycle():
    s = GroupSampler(5, 3, 2, seed=9, shuffle=False)
    np.testing.assert_array_equal(
        np.concatenate([s.epoch(e) for e in range(4)]), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    )
    np.testing.assert_array_equal(
        GroupSampler(2, 5, 1, seed=0, shuffle=False).epoch(1), [1, 0, 1, 0, 1]
    )


def test_small_prompt_set_wraps_within_an_epoch():
    idx = GroupSampler(3, 7, 2, seed=0).epoch(0)
    assert idx.shape == (7,) and set(idx) == {0, 1, 2}
    assert sorted(idx[:3]) == [0, 1, 2] and sorted(idx[3:6]) == [0, 1, 2]


def test_samples_repeat_each_prompt_k_times():
    s = GroupSampler(10, 4, 3, seed=1)
    prompt_idx, group_ids = s.samples(2)
    assert prompt_idx.dtype == group_ids.dtype == np.int64
    np.testing.assert_array_equal(prompt_idx, np.repeat(s.epoch(2), 3))
    np.testing.assert_array_equal(group_ids, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def test_host_slices_partition_the_epoch_in_whole_groups():
    s = GroupSampler(50, 6, 4, seed=2)
    idx = s.epoch(5)
    prompt_idx, group_ids = s.samples(5)
    for hosts in [1, 2, 3, 6]:
        per_group = [s.host_slice(idx, h, hosts) for h in range(hosts)]
        pi = [s.host_slice(prompt_idx, h, hosts) for h in range(hosts)]
        gi = [s.host_slice(group_ids, h, hosts) for h in range(hosts)]
        np.testing.assert_array_equal(np.concatenate(per_group), idx)
        np.testing.assert_array_equal(np.concatenate(pi), prompt_idx)
        np.testing.assert_array_equal(np.concatenate(gi), group_ids)
        for h in range(hosts):
            groups = np.unique(gi[h])
            assert len(gi[h]) == len(groups) * 4  # whole groups only
            np.testing.assert_array_equal(np.repeat(per_group[h], 4), pi[h])
    with pytest.raises(ValueError, match="prompts_per_epoch=6 is not divisible by process_count=4"):
        s.host_slice(idx, 0, 4)
    with pytest.raises(ValueError, match="process_index 2 is not in"):
        s.host_slice(idx, 2, 2)
    with pytest.raises(ValueError, match="leading size 5; expected prompts_per_epoch=6"):
        s.host_slice(idx[:5], 0, 2)
