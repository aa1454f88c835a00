# The two set-up commands of the README: `make demo` (main job on the embedded default) and `make test`.
export MUJOCO_GL ?= egl
PY := .venv/bin/python

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/vla-compare preset=quick output_dir=outputs/demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest tests
