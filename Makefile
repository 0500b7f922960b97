# Quick start: `make demo` then `make test`. Both create (or reuse) a virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flowclas-installed
# The CPU build of torch; on a Jetson or a CUDA machine install your own torch first and
# set TORCH_SPEC= (empty) so this step keeps it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install lint test demo clean

install: $(STAMP)

$(STAMP): setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet $(TORCH_SPEC))
	$(PY) -m pip install --quiet -e '.[test,export]'
	touch $@

# ruff (pyflakes, pycodestyle, import order, public docstrings) on the tree; mypy on the
# model, runtime and metrics packages (mypy.ini).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The ROS 2 Jazzy wheels and vision_msgs (built from third_party/) come first, so the node's
# tests run on a real ROS 2 graph.
test: lint ros
	$(PY) -m pytest -q test

# ROS 2 Jazzy from PyPI wheels plus vision_msgs built from third_party/ into $(VENV).
.PHONY: ros
ros: $(STAMP)
	bash scripts/install_ros.sh $(VENV)

demo: $(STAMP)
	$(VENV)/bin/flowclas demo --output out/demo

clean:
	rm -rf $(VENV) out build *.egg-info
