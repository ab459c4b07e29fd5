# The two commands of the README. Both install everything first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
# MovieLens-100K: the shared local copy where there is one, else `llmrec demo` downloads it.
ifneq ($(wildcard ../shared/data/ml-100k/u.data),)
export LLMREC_ML100K_DIR ?= $(abspath ../shared/data/ml-100k)
endif

.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m llmrec demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider
