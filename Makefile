# Thin front for ./dev, which does the real work (apt/pip set-up, build, tests).
# `make demo` and `make test` are the same as `./dev demo` and `./dev test`.
.PHONY: demo test build asan bench format
demo test build asan bench format:
	./dev $@
