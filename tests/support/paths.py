"""Where the repository is, wherever a test module sits."""

from pathlib import Path

REPOSITORY = Path(__file__).parents[2]

# Put first on the servers' path: packages the test environment has and the deployed broker
# does not are not importable there (see as_deployed/pydantic).
AS_DEPLOYED = Path(__file__).parent / "as_deployed"
