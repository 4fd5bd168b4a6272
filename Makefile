# One command for everything CI checks: `make test` (see tests/run.sh for the stages).
.PHONY: test
test:
	bash tests/run.sh
