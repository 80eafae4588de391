"""README, CI and setup agree; a second setup run rebuilds nothing; the CLI surface is stable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STVG_ROS = str(Path(sys.prefix) / "bin" / "stvg-ros")
PUBLIC_SUBCOMMANDS = ("demo", "up", "ask", "ground", "synth", "eval", "bench", "models")


def readme_commands() -> tuple[str, str]:
    """The two commands README.md gives: (main job, tests)."""
    text = (ROOT / "README.md").read_text()
    main = re.search(r"<!-- main-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.DOTALL)
    tests = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.DOTALL)
    assert main and tests, "README.md must mark its main and test commands"
    return main.group(1).strip(), tests.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_runs_the_demo():
    main_command, _ = readme_commands()
    assert "scripts/setup.sh" in main_command and "stvg-ros demo" in main_command


def test_second_setup_run_rebuilds_nothing():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stderr
    for step in ("dependencies up to date", "llama-cpp-python 0.3.36 present", "colcon build up to date"):
        assert step in log, f"setup rebuilt something: {step!r} missing in\n{log}"
    assert "building llama-cpp-python" not in log and "installing pinned" not in log


def test_cli_lists_every_public_subcommand():
    out = subprocess.run([STVG_ROS, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    for name in PUBLIC_SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), f"`stvg-ros {name}` missing from --help"


def test_every_subcommand_has_working_help():
    for name in PUBLIC_SUBCOMMANDS:
        out = subprocess.run([STVG_ROS, name, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"stvg-ros {name} --help failed:\n{out.stderr[-1500:]}"
        assert f"stvg-ros {name}" in out.stdout


def test_unknown_subcommand_is_a_clear_usage_error():
    out = subprocess.run([STVG_ROS, "fly"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_code_is_ruff_clean():
    out = subprocess.run([str(Path(sys.prefix) / "bin" / "ruff"), "check", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]


def _github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_readme_links_point_to_existing_files_and_sections():
    text = (ROOT / "README.md").read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"README links to missing section {target}"
        else:
            assert (ROOT / target.split("#")[0]).exists(), f"README links to missing file {target}"
