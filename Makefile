# The two commands: `make run` and `make test`. Both set up a virtualenv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000

.PHONY: run test lint venv clean

$(BIN)/gunicorn: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(BIN)/gunicorn

# Starts the registry on 127.0.0.1:$(PORT) with storage under ./data. Set USERNAME/PASSWORD
# (or ANONYMOUS_PULL=true) in the environment: with no credentials every request gets 401.
run: venv
	REGISTRY_DATA_DIR=$${REGISTRY_DATA_DIR:-./data} $(BIN)/gunicorn -c gunicorn.conf.py -b 127.0.0.1:$(PORT) app:app

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
