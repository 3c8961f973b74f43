"""Not pydantic: first on the path of the servers the tests start (``ServerProcess``).

pydantic is in the test environment for the MKA1 SDK and schemathesis only; the broker's
runtime dependencies (requirements/runtime.lock, the image) do not include it. Litestar
registers its pydantic plugins whenever pydantic can be imported, which cost every server
the tests started about 70 ms of CPU (median of 10 starts each) and ran them with plugins
the deployed broker never has. Here the import fails, as in the image, and Litestar
leaves them out.
"""

raise ImportError("pydantic is not among the broker's runtime dependencies")
