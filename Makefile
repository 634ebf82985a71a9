# ssljax: the two commands a new user needs are `make run` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
WORKDIR ?= runs/corinfomax_fashion_mnist
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install dataset run test test-integration test-slow bench clean

# The offline default dataset: Debian's dataset-fashion-mnist, installed with apt where apt
# exists (as root, or through sudo). Elsewhere ssljax falls back to a TFDS download.
dataset:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST found in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else echo "apt-get not found: Fashion-MNIST will be downloaded through TFDS on first use"; fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY) dataset
	$(PIP) install -q -e '.[train,test,plot,notebooks]'

# The main job: pre-train CorInfoMax on Fashion-MNIST (CPU-sized), then evaluate.
run: install
	$(PY) -m ssljax.main --config=configs/corinfomax.py:fashion_mnist --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest -n 2 --dist loadfile -q tests
	$(PY) -m pytest -q --doctest-modules ssljax

# End-to-end checks (the CLI, 2-process multi-host runs, preemption with kill -9, notebooks):
# about as long again as the default run; CI runs them after `make test`.
test-integration: install
	$(PY) -m pytest -n 2 --dist loadfile -q -m integration tests

test-slow: install
	$(PY) -m pytest -n 2 --dist loadfile -m slow -q

bench: install
	$(PY) experiments/bench_step.py --config=configs/simclr.py:fashion_mnist

clean:
	rm -rf $(VENV) runs .pytest_cache
