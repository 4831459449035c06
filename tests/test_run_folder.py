"""Run folders written before a config key existed still resume and sample: the keys in
`run_folder.LEGACY_VALUES` take the value that reproduces such a run."""

import pytest

from ffjax import configs, run_folder


def _config(algorithm: str) -> configs.ConfigDict:
    c = configs.base_config()
    configs.set_algorithm(c, algorithm)
    c.model.path, c.data.path = "/data/model", "/data/prompts"
    configs.add_reward(c, "brightness")
    return configs.validate(c)


def _old_config_txt(tmp_path, config, drop) -> str:
    """config.txt of `config` as a run made before the keys `drop` existed wrote it."""
    lines = [ln for ln in configs.to_text(config).splitlines() if ln.split(" = ")[0] not in drop]
    path = tmp_path / "config.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("algorithm", ["grpo", "nft", "awm"])
def test_an_old_run_resumes_with_the_legacy_values(tmp_path, algorithm):
    old = _config(algorithm)
    for key, value in run_folder.LEGACY_VALUES.items():  # what the old run did
        section, name = key.split(".")
        if name in old[section]:
            old[section][name] = value
    present = {k for k in run_folder.LEGACY_VALUES if k.split(".")[1] in old[k.split(".")[0]]}
    assert {"train.advantage_eps", "train.gdpo_std", "sampling.sigma_grid"} <= present
    path = _old_config_txt(tmp_path, old, present)

    new = _config(algorithm)  # today's defaults differ from the old behaviour
    with pytest.raises(configs.ConfigError, match="train.advantage_eps: None -> 'flow_factory'"):
        run_folder.check_resumable(path, new)
    applied = run_folder.with_legacy_values(new, path)
    assert sorted(a.split(" = ")[0] for a in applied) == sorted(present)
    assert new.train.advantage_eps == "flow_grpo" and new.sampling.sigma_grid == "flow_match_euler"
    run_folder.check_resumable(path, new)  # nothing else differs


def test_legacy_values_leave_keys_the_run_had_and_validate(tmp_path):
    c = _config("grpo")
    c.train.advantage_eps = "flow_factory"  # written by a run that had the key
    path = _old_config_txt(tmp_path, c, {"sampling.eval_solver"})
    new = _config("grpo")
    new.sampling.eval_solver = "euler"
    assert run_folder.with_legacy_values(new, path) == ["sampling.eval_solver = 'euler'"]
    assert new.train.advantage_eps == "flow_factory"
    configs.validate(new)  # every legacy value is an allowed one
    assert run_folder.with_legacy_values(new, tmp_path / "none.txt") == []  # no config.txt
