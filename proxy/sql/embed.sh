#!/bin/sh
# Turn the SQL files pgshunt installs into C strings, so the binary carries them:
#   sh proxy/sql/embed.sh proxy/sql/schema.sql ... > build/gen/sql.c
# Each FILE.sql becomes `const char sql_FILE[]`, declared in proxy/sql.h.
set -eu
echo '/* Generated from the files in proxy/sql by proxy/sql/embed.sh: do not edit. */'
echo '#include "proxy/sql.h"'
for f in "$@"; do
	name=$(basename "$f" .sql)
	echo
	echo "const char sql_${name}[] ="
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$/\\n"/' "$f"
	echo ';'
done
