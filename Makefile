# The two commands a fresh machine needs: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here, not in pyproject: an unpinned torch pulls GBs of CUDA wheels,
# while torch==2.13.0 resolves to the CPU wheel on these machines.
TORCH_PIN := torch==2.13.0 torchvision==0.28.0

.PHONY: install run test test-all bench clean data

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test,pretrained,onnx,openvino]'
	$(MAKE) --no-print-directory data
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt-get is there (as root); otherwise the default run
# falls back to scikit-learn's digits.
data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; the default run will use digits"; \
	fi

run: install
	$(VENV)/bin/nolabel run

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
