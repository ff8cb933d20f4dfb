# Tollgate: two commands do everything — `make run` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
PROTO_OUT := libs/tollgate-proto/src
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: install proto run test test-unit test-e2e bench fuzz lint clean

# uv itself comes from PyPI with pip when it is not on PATH (only Python 3.11+ and make are assumed).
.tools/bin/uv:
	python3 -m pip install --quiet --target .tools/uvpkg uv==0.13.9
	mkdir -p .tools/bin && ln -sf ../uvpkg/bin/uv .tools/bin/uv

.venv/.installed: pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) | $(UV)
	$(UV) sync --frozen --all-packages
	touch $@

install: .venv/.installed $(PROTO_OUT)/tollgate/.generated

proto: $(PROTO_OUT)/tollgate/.generated

# Generated code is never committed nor hand-edited: proto/ is the one source of truth.
$(PROTO_OUT)/tollgate/.generated: $(PROTOS) .venv/.installed
	find $(PROTO_OUT)/tollgate -mindepth 1 -not -path $(PROTO_OUT)/tollgate/__init__.py -delete
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $(PROTOS)
	find $(PROTO_OUT)/tollgate -mindepth 1 -type d -exec touch {}/__init__.py \;
	touch $@

run: install
	$(PY) -m tollgate_dev.run

# Lint and types first (seconds), then every test suite; any failure fails the run.
test: install lint
	bash .ci/pytest.sh

bench: install
	$(PY) -m bench.run
	$(PY) -m bench.cpu --seconds 5
	$(PY) -m bench.pipeline
	$(PY) -m bench.audit_export

# Schemathesis over ingress's OpenAPI against the whole platform (about 7,000 cases, new ones each run, minutes:
# not in CI; the normal suite runs the same ~400 every time). Figures in var/fuzz-figures.txt.
fuzz: install
	TOLLGATE_FUZZ_EXAMPLES=150 TOLLGATE_FUZZ_COVERAGE=1 TOLLGATE_HYPOTHESIS_EXPLORE=1 \
		TOLLGATE_FUZZ_REPORT=var/fuzz-figures.txt \
		$(PY) -m pytest tests/e2e/test_fuzz_api.py -p no:cacheprovider -q -s

lint: install
	.venv/bin/ruff check .
	.venv/bin/mypy libs/tollgate-common/src libs/tollgate-dev/src libs/tollgate-dlp/src libs/tollgate-ops/src services/*/src

clean:
	rm -rf .venv .tools var $(PROTO_OUT)/tollgate/.generated
