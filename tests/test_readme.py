"""The README's commands are the ones CI and newcomers run; keep them identical."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [
        ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    test_command = ci_lines[-1]
    assert "pytest" in test_command
    assert f"\n{test_command}\n" in (ROOT / "README.md").read_text()


def test_readme_main_job_runs_the_default_recipe():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && python -m ffjax.train\n" in readme
    assert (ROOT / "configs/demo.py").exists()
