# The two commands of the README. Everything else is CMake (see CMakePresets.json).
.PHONY: demo test
demo:
	./scripts/demo
test:
	./scripts/test
