"""What the CLI tests share: the installed ``procmem`` console script, run as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

PROCMEM = Path(sys.executable).parent / "procmem"
"""The console script installed beside the interpreter running the tests."""
