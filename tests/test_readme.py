"""README.md stays true: every `module.name` it cites exists, every file and folder of its tree exists, every
--flag of its train.py / torchrun lines is a config key, every docs/ link resolves, it stays under 260 lines,
and its cheapest commands run (`--help`, the plan of the 1.7B preset is covered by tests/test_plan.py)."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MODULES = {p.stem for p in ROOT.glob("*.py")}


def test_readme_is_short():
    assert len(README.splitlines()) <= 260


def test_every_cited_name_exists():
    cited = set(re.findall(r"`([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)(?:\([^`]*\))?`", README))
    cited |= set(re.findall(r"\(`([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)`", README))
    checked = 0
    for mod, name in cited:
        if mod in MODULES and name not in ("py", "md", "json", "jsonl"):
            assert hasattr(importlib.import_module(mod), name), f"README cites {mod}.{name}, which does not exist"
            checked += 1
    assert checked >= 10


def test_every_file_of_the_tree_and_every_link_exists():
    tree = README[README.index("## Files, in reading order"):README.index("## The toy world")]
    paths = re.findall(r"(?:^|\s)([a-z_]+(?:\.py|/))(?=\s)", tree, flags=re.M)
    assert len(paths) >= 25
    for p in paths:
        assert (ROOT / p).exists(), p
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_every_flag_of_the_launch_lines_is_a_config_key():
    keys = {f.name for f in config.Config.__dataclass_fields__.values()}
    lines = [l for l in README.splitlines() if "train.py" in l or l.strip().startswith("--")]
    flags = {m for l in lines for m in re.findall(r"--([a-z_0-9]+)", l)}
    torchrun = {"standalone", "nproc_per_node", "nnodes", "rdzv", "key"}   # --key=value: the syntax itself
    flags -= torchrun
    assert flags and flags <= keys | {"help", "preset", "resume", "plan"}, flags - keys
    for key in re.findall(r"`--([a-z_]+)(?:=[^`]*)?`", README):
        if not key.startswith("alarm") and key != "key":
            assert key in keys or key in ("resume", "overwrite", "quick"), key   # quick: the forks
    assert any(k.startswith("alarm_") for k in keys)
    for name in re.findall(r"\| `([a-z0-9.-]+)`(?: \(default\))? \|", README):
        if "-" in name or name in ("toy", "tiny"):
            assert name in config.PRESETS, name


def test_the_help_command_prints_usage():
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "qwen3-8b-base", "--help"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.startswith("usage:") and "--alarm_seen_rate" in p.stdout
