#!/bin/sh
# Run every cmocka unit-test binary given on the command line from the repository root
# and end with one summary line; exit 1 when any test failed.
passed=0
failed=0
for bin in "$@"; do
	out=$("$bin" 2>&1)
	rc=$?
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
	passed=$((passed + ${p:-0}))
	if [ "$rc" -ne 0 ]; then
		printf '%s\n' "$out"
		failed=$((failed + ${f:-1}))
		echo "FAIL $bin"
	else
		echo "ok   $bin (${p:-0} tests)"
	fi
done
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
