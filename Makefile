# The two commands a newcomer needs (see README):
#   make demo   - set everything up, build the embedded demo data, run the end-to-end demo
#   make test   - set everything up and run the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastcas-installed

.PHONY: demo test setup data clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian ships real Fashion-MNIST offline; elsewhere `fastcas demo` falls back to
# torchvision's downloader.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	  || echo "note: could not apt-get dataset-fashion-mnist; fastcas demo will try torchvision's downloader"; \
	fi

demo: setup data
	$(VENV)/bin/fastcas demo

test: setup
	$(PY) -m pytest
	$(VENV)/bin/fastcas selftest --device cpu --quick --json build/selftest-cpu.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
