"""Where the repository is, wherever a test module sits."""

from pathlib import Path

REPOSITORY = Path(__file__).parents[2]
