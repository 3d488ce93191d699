"""Print the README's Quick start command (2), the test command CI runs."""
import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
match = re.search(r"## Quick start.*?```(?:bash|sh)?\n(.*?)```", text, re.S)
if not match:
    sys.exit("README.md has no ```bash block under '## Quick start'")
lines = [l for l in match.group(1).splitlines() if l.strip() and not l.lstrip().startswith("#")]
if len(lines) != 2:
    sys.exit(f"README.md's Quick start block must hold exactly two commands, found {len(lines)}")
print(lines[1])
