"""Development tools: what tests, benchmarks and `scripts/demo` need and the product does not.

Run from the checkout (`python -m devtools.standin ...`); never installed: pyproject's
`[tool.setuptools.packages.find]` includes only `proxy*`, and the container image copies only
`proxy/`. Modules here may import `proxy`; `proxy` never imports them.
"""
